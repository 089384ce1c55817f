// BOOL_SWITCH(cond, kName, [&] { ... }): calls the lambda with `kName` a constexpr bool
// equal to the run-time `cond`, so that a flag such as relu/tanh becomes a template
// argument (the pattern of flash-attention's static_switch.h).
#pragma once

#define BOOL_SWITCH(COND, CONST_NAME, ...)   \
  [&] {                                      \
    if (COND) {                              \
      static constexpr bool CONST_NAME = true; \
      return __VA_ARGS__();                  \
    }                                        \
    static constexpr bool CONST_NAME = false; \
    return __VA_ARGS__();                    \
  }()
