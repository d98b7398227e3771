# run.cmake — installs gradc into a scratch prefix, builds tests/embed against the installed
# package (find_package(gradc CONFIG)) and runs it on a model.
#   -DBUILD=build dir -DSOURCE=tests/embed -DWORK=scratch dir -DMODEL=model file
file(REMOVE_RECURSE ${WORK})
function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()
step(${CMAKE_COMMAND} --install ${BUILD} --prefix ${WORK}/prefix)
# A sanitizer build of gradc needs the program built the same way (the runtime comes first).
set(flags "")
if(SANITIZE)
  set(flags "-DCMAKE_CXX_FLAGS=-fsanitize=address,undefined")
endif()
step(${CMAKE_COMMAND} -S ${SOURCE} -B ${WORK}/build -DCMAKE_PREFIX_PATH=${WORK}/prefix -DCMAKE_BUILD_TYPE=Release ${flags})
step(${CMAKE_COMMAND} --build ${WORK}/build)
step(${WORK}/build/example ${MODEL})
