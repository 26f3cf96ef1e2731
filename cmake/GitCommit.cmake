# SBN_GIT_COMMIT: the commit this build is made from, for the generated config.h. syncbn-train's ranks
# compare it at start-up (include/syncbn/agreement.h), so its text must be equal exactly when the sources
# are:
#   <12 hex>                  HEAD, the work tree clean
#   <12 hex>-dirty-<8 hex>    tracked files differ from HEAD; the suffix hashes `git diff HEAD`, so nodes
#                             with the same local changes agree and nodes with different ones do not.
#                             Untracked files (a hostfile, notes) are left out: none is compiled unless a
#                             tracked CMakeLists.txt names it, and that is a tracked change
#   unknown                   no git, or not built from a git work tree (a source tarball)
# Evaluated when cmake configures (scripts/build.sh configures every time); configure also re-runs by
# itself when HEAD moves (commit, checkout, pull), so the commit cannot go stale across those.
find_package(Git QUIET)
set(SBN_GIT_COMMIT "unknown")
if(GIT_FOUND)
  execute_process(COMMAND "${GIT_EXECUTABLE}" rev-parse --short=12 HEAD
                  WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}" RESULT_VARIABLE _sbn_rc OUTPUT_VARIABLE _sbn_head
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_sbn_rc EQUAL 0 AND _sbn_head MATCHES "^[0-9a-f]+$")
    set(SBN_GIT_COMMIT "${_sbn_head}")
    # --full-index and no colour/external tools: the same changes give the same text on every clone.
    execute_process(COMMAND "${GIT_EXECUTABLE}" -c core.quotepath=off diff --no-color --no-ext-diff --full-index
                            --binary HEAD
                    WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}" OUTPUT_VARIABLE _sbn_diff ERROR_QUIET)
    if(NOT _sbn_diff STREQUAL "")
      string(SHA256 _sbn_hash "${_sbn_diff}")
      string(SUBSTRING "${_sbn_hash}" 0 8 _sbn_hash)
      string(APPEND SBN_GIT_COMMIT "-dirty-${_sbn_hash}")
    endif()
    # Re-configure when HEAD or the branch it names moves (paths resolved by git: worktrees, packed refs).
    execute_process(COMMAND "${GIT_EXECUTABLE}" rev-parse --symbolic-full-name HEAD
                    WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}" OUTPUT_VARIABLE _sbn_ref
                    OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    foreach(_sbn_name HEAD ${_sbn_ref} packed-refs)
      execute_process(COMMAND "${GIT_EXECUTABLE}" rev-parse --git-path "${_sbn_name}"
                      WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}" OUTPUT_VARIABLE _sbn_path
                      OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      if(_sbn_path)
        cmake_path(ABSOLUTE_PATH _sbn_path BASE_DIRECTORY "${PROJECT_SOURCE_DIR}")
        if(EXISTS "${_sbn_path}")
          set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_sbn_path}")
        endif()
      endif()
    endforeach()
  endif()
endif()
message(STATUS "syncbn: git commit ${SBN_GIT_COMMIT}")
