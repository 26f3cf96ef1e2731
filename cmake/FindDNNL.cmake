# FindDNNL: locates oneDNN (libdnnl) without its package config, which in Debian's build requires the
# OpenCL development files we do not use (CPU engine only). Honours DNNL_ROOT.
# Defines DNNL_FOUND, DNNL_VERSION and the imported target DNNL::dnnl.
include(${CMAKE_CURRENT_LIST_DIR}/SbnFindLibrary.cmake)
find_path(DNNL_INCLUDE_DIR dnnl.hpp HINTS ${DNNL_ROOT} $ENV{DNNL_ROOT} PATH_SUFFIXES include)
find_library(DNNL_LIBRARY NAMES dnnl HINTS ${DNNL_ROOT} $ENV{DNNL_ROOT} PATH_SUFFIXES lib lib64)
# The version macros live in oneapi/dnnl/dnnl_version.h (dnnl_version.h forwards to it).
sbn_header_version(DNNL_VERSION "${DNNL_INCLUDE_DIR}" MACROS DNNL_VERSION_MAJOR DNNL_VERSION_MINOR
                   DNNL_VERSION_PATCH HEADERS oneapi/dnnl/dnnl_version.h dnnl_version.h)
sbn_find_package_finish(DNNL DNNL::dnnl)
