# FindDNNL: locates oneDNN (libdnnl) without its package config, which in Debian's build requires the
# OpenCL development files we do not use (CPU engine only). Honours DNNL_ROOT.
# Defines DNNL_FOUND, DNNL_VERSION and the imported target DNNL::dnnl.
find_path(DNNL_INCLUDE_DIR dnnl.hpp HINTS ${DNNL_ROOT} $ENV{DNNL_ROOT} PATH_SUFFIXES include)
find_library(DNNL_LIBRARY NAMES dnnl HINTS ${DNNL_ROOT} $ENV{DNNL_ROOT} PATH_SUFFIXES lib lib64)
# The version macros live in oneapi/dnnl/dnnl_version.h (dnnl_version.h forwards to it).
set(_vh "${DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h")
if(NOT EXISTS "${_vh}")
  set(_vh "${DNNL_INCLUDE_DIR}/dnnl_version.h")
endif()
if(DNNL_INCLUDE_DIR AND EXISTS "${_vh}")
  file(STRINGS "${_vh}" _v REGEX "^#define DNNL_VERSION_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE ".*DNNL_VERSION_MAJOR ([0-9]+).*" "\\1" _maj "${_v}")
  string(REGEX REPLACE ".*DNNL_VERSION_MINOR ([0-9]+).*" "\\1" _min "${_v}")
  string(REGEX REPLACE ".*DNNL_VERSION_PATCH ([0-9]+).*" "\\1" _pat "${_v}")
  set(DNNL_VERSION "${_maj}.${_min}.${_pat}")
endif()
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(DNNL REQUIRED_VARS DNNL_LIBRARY DNNL_INCLUDE_DIR VERSION_VAR DNNL_VERSION)
if(DNNL_FOUND AND NOT TARGET DNNL::dnnl)
  add_library(DNNL::dnnl UNKNOWN IMPORTED)
  set_target_properties(DNNL::dnnl PROPERTIES IMPORTED_LOCATION "${DNNL_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${DNNL_INCLUDE_DIR}")
endif()
mark_as_advanced(DNNL_INCLUDE_DIR DNNL_LIBRARY)
