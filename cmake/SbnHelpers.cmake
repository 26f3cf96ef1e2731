# Helpers shared by the targets: warning flags and MPI test registration.

# sbn_target_defaults(<target>): warnings, the CPU arch flag and the generated include dir.
function(sbn_target_defaults tgt)
  target_compile_options(${tgt} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wno-unused-parameter>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${SBN_WERROR}>>:-Werror>)
  if(SBN_CPU_ARCH)
    target_compile_options(${tgt} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=${SBN_CPU_ARCH}>)
  endif()
  target_include_directories(${tgt} PUBLIC
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/include>)
endfunction()

# The environment every MPI test runs in: Open MPI refuses root without these, needs permission to
# oversubscribe 2 cores with 4 ranks, and must yield when idle or oversubscribed ranks starve each other.
set(SBN_MPI_TEST_ENV
  OMPI_ALLOW_RUN_AS_ROOT=1
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  OMPI_MCA_rmaps_base_oversubscribe=1
  OMPI_MCA_mpi_yield_when_idle=1
  OMPI_MCA_hwloc_base_binding_policy=none
  OMPI_MCA_btl_vader_single_copy_mechanism=none
  PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe)

# sbn_add_mpi_test(<name> <target> <np> [TIMEOUT s] [LABELS l...] [ARGS a...] [REGEX r] [WILL_FAIL])
# Registers <name>_np<np> running <target> under mpiexec with <np> ranks.
function(sbn_add_mpi_test name tgt np)
  cmake_parse_arguments(A "WILL_FAIL" "TIMEOUT;REGEX" "LABELS;ARGS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 120)
  endif()
  set(test_name ${name}_np${np})
  add_test(NAME ${test_name}
           COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} ${MPIEXEC_PREFLAGS}
                   $<TARGET_FILE:${tgt}> ${MPIEXEC_POSTFLAGS} ${A_ARGS})
  set_tests_properties(${test_name} PROPERTIES
    TIMEOUT ${A_TIMEOUT}
    LABELS "mpi;${A_LABELS}"
    ENVIRONMENT "${SBN_MPI_TEST_ENV}"
    PROCESSORS ${np})
  if(A_REGEX)
    set_tests_properties(${test_name} PROPERTIES PASS_REGULAR_EXPRESSION "${A_REGEX}")
  endif()
  if(A_WILL_FAIL)
    set_tests_properties(${test_name} PROPERTIES WILL_FAIL TRUE)
  endif()
endfunction()
