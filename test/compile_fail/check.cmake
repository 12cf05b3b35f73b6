# Proves that writing to a weight does not compile (test/compile_fail/read_only_weights.cpp).
# Run by CTest: cmake -DCXX=<compiler> -DSRC=<file> -DINCLUDE=<dir> -DCASES=<n> -P check.cmake
# Case 0 (reads only) must compile, so a broken command line cannot pass for a refused write; each of
# cases 1..CASES must fail with a compiler error about const (not some unrelated error).
foreach(case RANGE 0 ${CASES})
  execute_process(COMMAND ${CXX} -std=c++17 -fsyntax-only -I${INCLUDE} -DCASE=${case} ${SRC}
                  RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET)
  if(case EQUAL 0)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "case 0 (reading the weights) does not compile:\n${err}")
    endif()
  elseif(rc EQUAL 0)
    message(FATAL_ERROR "case ${case}: a write to a weight compiles; it must not")
  elseif(NOT err MATCHES "const")
    message(FATAL_ERROR "case ${case} fails, but not for constness:\n${err}")
  else()
    message(STATUS "case ${case}: refused by the compiler, as it should be")
  endif()
endforeach()
