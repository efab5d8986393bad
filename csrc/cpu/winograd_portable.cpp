// The Winograd kernel for any CPU, compiled for the compiler's default target (vector code via
// GCC/Clang vector extensions, which the compiler lowers to whatever SIMD the target has).
#define UNET_FAST_WINO_NS wino_portable
#include "winograd_kernel.h"
