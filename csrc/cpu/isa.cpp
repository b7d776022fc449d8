// CPU feature detection and the selected ISA level of the row loops (see isa.h).
#include "isa.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <atomic>

namespace unlearnx {

namespace {

CpuIsa best_supported() {
#if UNLX_X86_ISAS
  __builtin_cpu_init();
  // The arch levels check every feature of the level and that the OS saves the wide
  // registers (XCR0), not just the CPUID bit.
  if (__builtin_cpu_supports("x86-64-v4") != 0) return CpuIsa::avx512;
  if (__builtin_cpu_supports("x86-64-v3") != 0) return CpuIsa::avx2;
#endif
  return CpuIsa::baseline;
}

std::atomic<int>& selected() {
  static std::atomic<int> isa{static_cast<int>(best_supported())};
  return isa;
}

constexpr CpuIsa kAll[] = {CpuIsa::avx512, CpuIsa::avx2, CpuIsa::baseline};

bool compiled(CpuIsa isa) { return UNLX_X86_ISAS || isa == CpuIsa::baseline; }

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512:
      return "avx512";
    case CpuIsa::avx2:
      return "avx2";
    case CpuIsa::baseline:
      return "baseline";
  }
  return "?";
}

CpuIsa active_cpu_isa() { return static_cast<CpuIsa>(selected().load(std::memory_order_relaxed)); }

std::vector<std::string> compiled_cpu_isas() {
  std::vector<std::string> out;
  for (CpuIsa isa : kAll)
    if (compiled(isa)) out.emplace_back(cpu_isa_name(isa));
  return out;
}

std::vector<std::string> supported_cpu_isas() {
  std::vector<std::string> out;
  for (CpuIsa isa : kAll)
    if (compiled(isa) && isa <= best_supported()) out.emplace_back(cpu_isa_name(isa));
  return out;
}

std::string set_cpu_isa(const std::string& name) {
  const std::string previous = cpu_isa_name(active_cpu_isa());
  if (name == "auto") {
    selected().store(static_cast<int>(best_supported()));
    return previous;
  }
  std::string known;
  for (CpuIsa isa : kAll) {
    known += known.empty() ? "" : ", ";
    known += cpu_isa_name(isa);
    if (name != cpu_isa_name(isa)) continue;
    TORCH_CHECK_VALUE(compiled(isa), "CPU ISA '", name, "' is not compiled into this build (it has: ",
                      c10::Join(", ", compiled_cpu_isas()), ")");
    TORCH_CHECK_VALUE(isa <= best_supported(), "CPU ISA '", name, "' is not supported by this CPU (it runs: ",
                      c10::Join(", ", supported_cpu_isas()), ")");
    selected().store(static_cast<int>(isa));
    return previous;
  }
  TORCH_CHECK_VALUE(false, "unknown CPU ISA '", name, "': choose auto, ", known);
  return previous;
}

}  // namespace unlearnx
