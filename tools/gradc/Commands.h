// Commands.h — the gradc commands, one file each: `NAMEOptions` declares a command's options,
// `runNAME` runs it and returns the exit status (a usage mistake throws UsageError, or a job's
// OptionError for an option out of range; an error in the user's input UserError). main.cpp's
// table lists them with their usage lines.
#pragma once

#include "Options.h"

namespace gradc::cli {

void checkOptions(po::options_description& d);
int runCheck(const po::variables_map& vm);
void dumpOptions(po::options_description& d);
int runDump(const po::variables_map& vm);
void gradsOptions(po::options_description& d);
int runGrads(const po::variables_map& vm);
void benchOptions(po::options_description& d);
int runBench(const po::variables_map& vm);
void trainOptions(po::options_description& d);
int runTrain(const po::variables_map& vm);
void actsOptions(po::options_description& d);
int runActs(const po::variables_map& vm);
void deadOptions(po::options_description& d);
int runDead(const po::variables_map& vm);
void compileOptions(po::options_description& d);
int runCompile(const po::variables_map& vm);
void actOptions(po::options_description& d);
int runAct(const po::variables_map& vm);
void deriveOptions(po::options_description& d);
int runDerive(const po::variables_map& vm);
void plotOptions(po::options_description& d);
int runPlot(const po::variables_map& vm);

} // namespace gradc::cli
