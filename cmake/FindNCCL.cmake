# FindNCCL: locates NCCL in NCCL_ROOT (variable or environment), the CUDA toolkit, or system paths.
# Defines NCCL_FOUND, NCCL_INCLUDE_DIR, NCCL_LIBRARY, NCCL_VERSION and the imported target NCCL::nccl.
include(${CMAKE_CURRENT_LIST_DIR}/SbnFindLibrary.cmake)
sbn_cuda_library_hints(_nccl_hints ${NCCL_ROOT} $ENV{NCCL_ROOT} $ENV{NCCL_HOME})
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${_nccl_hints} PATH_SUFFIXES include)
find_library(NCCL_LIBRARY NAMES nccl HINTS ${_nccl_hints} PATH_SUFFIXES lib64 lib lib/x86_64-linux-gnu)
sbn_header_version(NCCL_VERSION "${NCCL_INCLUDE_DIR}" MACROS NCCL_MAJOR NCCL_MINOR NCCL_PATCH HEADERS nccl.h)
sbn_find_package_finish(NCCL NCCL::nccl)
