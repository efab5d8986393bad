// The one schema file of the native library: every op of the unet_fast namespace is declared
// here; cpu/ and cuda/ register implementations with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing unet_fast._C only has to run the static registrations below; the module itself is
// empty, so it is declared with the bare CPython API (no pybind11 needed).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(unet_fast, m) {}
