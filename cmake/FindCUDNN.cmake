# FindCUDNN: locates cuDNN in CUDNN_ROOT (variable or environment), the CUDA toolkit, or system paths.
# Defines CUDNN_FOUND, CUDNN_INCLUDE_DIR, CUDNN_LIBRARY, CUDNN_VERSION and the imported target CUDNN::cudnn
# (GLOBAL, so targets in any directory can link the libraries that use it).
#
# cuDNN 9 splits into sub-libraries (libcudnn_cnn, _ops, _graph, _engines_*) that libcudnn loads at run
# time from its own directory; linking libcudnn is enough.
include(${CMAKE_CURRENT_LIST_DIR}/SbnFindLibrary.cmake)
sbn_cuda_library_hints(_cudnn_hints ${CUDNN_ROOT} $ENV{CUDNN_ROOT} $ENV{CUDNN_HOME} $ENV{CUDNN_PATH})
find_path(CUDNN_INCLUDE_DIR cudnn.h HINTS ${_cudnn_hints} PATH_SUFFIXES include)
find_library(CUDNN_LIBRARY NAMES cudnn HINTS ${_cudnn_hints} PATH_SUFFIXES lib64 lib lib/x86_64-linux-gnu)
# The version: cudnn_version.h (cuDNN >= 8), else cudnn.h (cuDNN 7).
sbn_header_version(CUDNN_VERSION "${CUDNN_INCLUDE_DIR}" MACROS CUDNN_MAJOR CUDNN_MINOR CUDNN_PATCHLEVEL
                   HEADERS cudnn_version.h cudnn.h)
sbn_find_package_finish(CUDNN CUDNN::cudnn GLOBAL)
