# run.cmake — compiles a model ahead of time, builds tests/aot/example.c with plain cc (no
# LLVM headers or libraries), runs it, and compares its gradients with the JIT's.
#   -DGRADC=gradc -DREFERENCE=reference -DCC=cc -DSOURCE=tests/aot -DWORK=scratch -DMODEL=model.nn
#   -DCPU=portable|generic|native|NAME
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
function(step)
  execute_process(COMMAND ${ARGN} WORKING_DIRECTORY ${WORK} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()
set(batch 16)
step(${GRADC} compile ${MODEL} --batch ${batch} --target-cpu ${CPU} --prefix model -o model.o --header model.h)
step(${CC} -std=c11 -O2 -Wall -Wextra -Werror -I${WORK} ${SOURCE}/example.c model.o -lm -o example)
step(${GRADC} grads ${MODEL} --batch ${batch} --save-params params.safetensors --format csv)
step(${WORK}/example params.safetensors grads.out)
step(${REFERENCE} ${MODEL} ${batch} params.safetensors grads.out)
