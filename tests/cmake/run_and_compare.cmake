# SPDX-License-Identifier: MIT
# Runs PROGRAM (with the ;-list ARGS) with INPUT on its standard input; its standard output
# must equal EXPECTED.
#   cmake -DPROGRAM=... [-DARGS=a;b] -DINPUT=... -DEXPECTED=... -P run_and_compare.cmake
execute_process(COMMAND "${PROGRAM}" ${ARGS} INPUT_FILE "${INPUT}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE actual ERROR_VARIABLE errors)
if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${PROGRAM} exited with ${rc}\n${errors}")
endif()
file(READ "${EXPECTED}" expected)
if(NOT actual STREQUAL expected)
    message(FATAL_ERROR "${PROGRAM} printed:\n${actual}\nexpected:\n${expected}")
endif()
