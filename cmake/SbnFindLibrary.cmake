# Shared pieces of our Find modules (FindNCCL, FindCUDNN, FindDNNL): the CUDA-toolkit search hints, the
# version read from a header's MAJOR/MINOR/PATCH macros, and the standard-args check plus imported target.
include_guard(GLOBAL)
include(FindPackageHandleStandardArgs)

# sbn_cuda_library_hints(<out_var> [root...]): the given roots, then the CUDA toolkit's library root and
# the parents of its include directories, then /usr/local/cuda (libraries shipped next to the toolkit).
function(sbn_cuda_library_hints out_var)
  set(_hints ${ARGN})
  if(CUDAToolkit_LIBRARY_ROOT)
    list(APPEND _hints ${CUDAToolkit_LIBRARY_ROOT})
  endif()
  foreach(_d ${CUDAToolkit_INCLUDE_DIRS})
    get_filename_component(_p "${_d}" DIRECTORY)
    list(APPEND _hints "${_p}")
  endforeach()
  list(APPEND _hints /usr/local/cuda)
  set(${out_var} ${_hints} PARENT_SCOPE)
endfunction()

# sbn_header_version(<out_var> <include_dir> MACROS <major> <minor> <patch> HEADERS <header>...):
# "major.minor.patch" from `#define <macro> <number>` lines of the first listed header (relative to
# include_dir) that exists and has them; <out_var> is left unset if none does.
function(sbn_header_version out_var include_dir)
  cmake_parse_arguments(PARSE_ARGV 2 _arg "" "" "MACROS;HEADERS")
  list(GET _arg_MACROS 0 _major)
  list(GET _arg_MACROS 1 _minor)
  list(GET _arg_MACROS 2 _patch)
  if(NOT include_dir)
    return()
  endif()
  foreach(_h ${_arg_HEADERS})
    if(EXISTS "${include_dir}/${_h}")
      file(STRINGS "${include_dir}/${_h}" _v REGEX "^#define (${_major}|${_minor}|${_patch}) +[0-9]+")
      if(_v)
        string(REGEX REPLACE ".*${_major} +([0-9]+).*" "\\1" _maj "${_v}")
        string(REGEX REPLACE ".*${_minor} +([0-9]+).*" "\\1" _min "${_v}")
        string(REGEX REPLACE ".*${_patch} +([0-9]+).*" "\\1" _pat "${_v}")
        set(${out_var} "${_maj}.${_min}.${_pat}" PARENT_SCOPE)
        return()
      endif()
    endif()
  endforeach()
endfunction()

# sbn_find_package_finish(<Pkg> <target> [GLOBAL]): find_package_handle_standard_args over <Pkg>_LIBRARY,
# <Pkg>_INCLUDE_DIR and <Pkg>_VERSION, then the imported target <target> (GLOBAL if asked) for the
# library. A macro so that <Pkg>_FOUND lands in the calling Find module's scope.
macro(sbn_find_package_finish _sbn_pkg _sbn_target)
  find_package_handle_standard_args(${_sbn_pkg} REQUIRED_VARS ${_sbn_pkg}_LIBRARY ${_sbn_pkg}_INCLUDE_DIR
                                    VERSION_VAR ${_sbn_pkg}_VERSION)
  if(${_sbn_pkg}_FOUND AND NOT TARGET ${_sbn_target})
    add_library(${_sbn_target} UNKNOWN IMPORTED ${ARGN})
    set_target_properties(${_sbn_target} PROPERTIES IMPORTED_LOCATION "${${_sbn_pkg}_LIBRARY}"
                          INTERFACE_INCLUDE_DIRECTORIES "${${_sbn_pkg}_INCLUDE_DIR}")
  endif()
  mark_as_advanced(${_sbn_pkg}_INCLUDE_DIR ${_sbn_pkg}_LIBRARY)
endmacro()
