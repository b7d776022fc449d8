// The SIMT shim's scheduler: fibers, barriers, warp exchange (see simt.h).
#include "simt/simt.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#if !defined(__x86_64__) || !defined(__linux__)
#error "the SIMT emulation build needs x86-64 Linux (setup.py leaves it out elsewhere)"
#endif

// unlx_simt_switch(save, load): saves the callee-saved registers on the current stack, stores
// the stack pointer in *save, switches to the stack `load` and restores what was saved there
// (System V x86-64 ABI). The FP control words (MXCSR, x87) are not switched: the fibers of a
// launch and their scheduler share one OS thread and the kernels never change them.
extern "C" void unlx_simt_switch(void** save, void* load);
asm(R"(
  .text
  .p2align 4
  .globl unlx_simt_switch
  .hidden unlx_simt_switch
  .type unlx_simt_switch, @function
unlx_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size unlx_simt_switch, .-unlx_simt_switch
)");

namespace unlearnx::simt {

namespace {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kStackBytes = 128 * 1024;  // kernels use a few hundred bytes; pages are committed lazily

// One fiber stack with a guard page below it (an overflow faults instead of corrupting).
struct Stack {
  char* base = nullptr;
  size_t bytes = 0;
  Stack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    bytes = kStackBytes + page;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "simt: could not map a fiber stack");
    base = static_cast<char*>(p);
    TORCH_CHECK(mprotect(base, page, PROT_NONE) == 0, "simt: could not protect a fiber stack's guard page");
  }
  Stack(const Stack&) = delete;
  Stack(Stack&& o) noexcept : base(o.base), bytes(o.bytes) { o.base = nullptr; }
  ~Stack() {
    if (base != nullptr) munmap(base, bytes);
  }
  char* top() const { return base + bytes; }
};

enum class FiberState { running, done, trapped };

struct Rendezvous;

struct Fiber {
  void* sp = nullptr;
  const Rendezvous* waits_on = nullptr;  // with the generation it waits to see end
  unsigned waits_for = 0;
  ThreadContext ctx{};
  FiberState state = FiberState::running;
  unsigned shuffle_phase = 0;  // which of the warp's two exchange buffers the next shuffle uses
};

struct Rendezvous {
  unsigned arrived = 0, generation = 0, size = 0;
};

struct Warp {
  Rendezvous meet;
  uint64_t slots[2][kWarpSize];
};

struct Trap {
  const char* condition = nullptr;
  const char* file = nullptr;
  int line = 0;
  ThreadContext where{};
};

struct Launch {
  KernelBody body = nullptr;
  void* state = nullptr;
  unsigned threads = 0;
  Fiber fibers[kMaxThreads];
  Warp warps[kMaxThreads / kWarpSize];
  Rendezvous block;
  Fiber* current = nullptr;
  void* scheduler_sp = nullptr;
  bool progress = false;
  Trap trap;
};

thread_local Launch* t_launch = nullptr;
thread_local std::vector<Stack> t_stacks;

Launch& launch() { return *t_launch; }

unsigned linear_tid(const ThreadContext& c) {
  return c.thread_idx.x + c.block_dim.x * (c.thread_idx.y + c.block_dim.y * c.thread_idx.z);
}

void yield_to_scheduler() {
  Launch& L = launch();
  unlx_simt_switch(&L.current->sp, L.scheduler_sp);
}

[[noreturn]] void fiber_main() {
  Launch& L = launch();
  L.body(L.state);
  L.current->state = FiberState::done;
  L.progress = true;
  yield_to_scheduler();
  __builtin_unreachable();
}

// Every thread of the group arrives before any leaves; the last to arrive goes straight on.
void meet(Rendezvous& r) {
  Launch& L = launch();
  L.progress = true;
  const unsigned generation = r.generation;
  if (++r.arrived == r.size) {
    r.arrived = 0;
    ++r.generation;
    return;
  }
  L.current->waits_on = &r;
  L.current->waits_for = generation;
  yield_to_scheduler();  // resumed only once r.generation has moved on
  L.current->waits_on = nullptr;
}

[[noreturn]] void trap(const char* condition, const char* file, int line) {
  Launch& L = launch();
  L.trap = Trap{condition, file, line, L.current->ctx};
  L.current->state = FiberState::trapped;
  yield_to_scheduler();
  __builtin_unreachable();
}

void prepare(Fiber& f, const Stack& stack, unsigned index) {
  // Stagger the stack tops inside their page: at the same page offset, the hot frames of all
  // fibers would compete for one cache set.
  const uintptr_t stagger = (index * 11u % 64u) * 64u;
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack.top()) - stagger) & ~uintptr_t(15));
  // the frame unlx_simt_switch pops: r15..r12, rbx, rbp, then the return address (fiber_main)
  // and a zero slot so that fiber_main starts with a call-aligned stack
  uint64_t* sp = top - 8;
  for (int i = 0; i < 6; ++i) sp[i] = 0;
  sp[6] = reinterpret_cast<uint64_t>(&fiber_main);
  sp[7] = 0;
  f.sp = sp;
  f.state = FiberState::running;
  f.shuffle_phase = 0;
  f.waits_on = nullptr;
}

std::string describe(const uint3& b, const uint3& t) {
  return "block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) + "), thread (" +
         std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}

void run_block(Launch& L, const uint3& block_idx, const dim3& grid, const dim3& block) {
  L.block = Rendezvous{0, 0, L.threads};
  for (unsigned w = 0; w * kWarpSize < L.threads; ++w)
    L.warps[w].meet = Rendezvous{0, 0, std::min(kWarpSize, L.threads - w * kWarpSize)};
  for (unsigned i = 0; i < L.threads; ++i) {
    Fiber& f = L.fibers[i];
    f.ctx.thread_idx = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
    f.ctx.block_idx = block_idx;
    f.ctx.block_dim = block;
    f.ctx.grid_dim = grid;
    prepare(f, t_stacks[i], i);
  }
  unsigned live = L.threads;
  while (live > 0) {
    L.progress = false;
    for (unsigned i = 0; i < L.threads; ++i) {
      Fiber& f = L.fibers[i];
      if (f.state != FiberState::running || (f.waits_on != nullptr && f.waits_on->generation == f.waits_for))
        continue;
      L.current = &f;
      unlx_simt_switch(&L.scheduler_sp, f.sp);
      if (f.state == FiberState::trapped) {
        TORCH_CHECK(false, "simt: device-side assert `", L.trap.condition, "` failed at ", L.trap.file, ":",
                    L.trap.line, " in ", describe(L.trap.where.block_idx, L.trap.where.thread_idx));
      }
      if (f.state == FiberState::done) --live;
    }
    TORCH_CHECK(L.progress, "simt: deadlock in ", describe(block_idx, uint3{0, 0, 0}), ": ", live, " of ",
                L.threads,
                " threads wait at a barrier (__syncthreads or a warp shuffle) that the others never reach");
  }
}

}  // namespace

const ThreadContext& context() { return launch().current->ctx; }

void sync_block() { meet(launch().block); }

uint64_t warp_exchange_xor(unsigned mask, uint64_t value, int lane_mask) {
  Launch& L = launch();
  Fiber& f = *L.current;
  const unsigned tid = linear_tid(f.ctx), lane = tid % kWarpSize;
  const int src_lane = static_cast<int>(lane) ^ lane_mask;
  Warp& w = L.warps[tid / kWarpSize];
  const unsigned full = w.meet.size == kWarpSize ? 0xffffffffu : (1u << w.meet.size) - 1;
  if (mask != full) trap("shuffle mask == all lanes of the warp (partial masks are not emulated)", __FILE__, __LINE__);
  if (src_lane < 0 || static_cast<unsigned>(src_lane) >= w.meet.size)
    trap("shuffle source lane inside the warp", __FILE__, __LINE__);
  // Two buffers, alternating: a lane can write its next value while slower lanes still read
  // this one, and cannot come back to this buffer before every lane has left this rendezvous.
  const unsigned phase = f.shuffle_phase;
  f.shuffle_phase ^= 1;
  w.slots[phase][lane] = value;
  meet(w.meet);
  return w.slots[phase][src_lane];
}

void kernel_assert_failed(const char* condition, const char* file, int line) { trap(condition, file, line); }

void run_grid(dim3 grid, dim3 block, KernelBody body, void* state) {
  TORCH_CHECK(t_launch == nullptr, "simt: a kernel cannot launch another kernel");
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreads, "simt: a block has 1..", kMaxThreads, " threads, got ",
              threads);
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.y <= 65535 && grid.z <= 65535,
              "simt: invalid grid (", grid.x, ",", grid.y, ",", grid.z, ")");
  // Blocks are independent, as on a GPU: the intra-op threads take ranges of them, each with
  // its own fibers, stacks and (thread_local) __shared__ storage.
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    while (t_stacks.size() < threads) t_stacks.emplace_back();
    auto L = std::make_unique<Launch>();
    L->body = body;
    L->state = state;
    L->threads = static_cast<unsigned>(threads);
    t_launch = L.get();
    struct Reset {
      ~Reset() { t_launch = nullptr; }
    } reset;
    for (int64_t b = begin; b < end; ++b) {
      const auto x = static_cast<unsigned>(b % grid.x), y = static_cast<unsigned>(b / grid.x % grid.y),
                 z = static_cast<unsigned>(b / (int64_t(grid.x) * grid.y));
      run_block(*L, uint3{x, y, z}, grid, block);
    }
  });
}

}  // namespace unlearnx::simt
