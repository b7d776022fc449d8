from unlearnx._C import build_info
