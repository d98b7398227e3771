// Jit.cpp — LLJIT for the host, and the host's TargetMachine.
#include "Jit.h"

#include "ThreadPool.h"

#include <llvm/ExecutionEngine/Orc/Core.h>
#include <llvm/ExecutionEngine/Orc/ExecutionUtils.h>
#include <llvm/ExecutionEngine/Orc/JITTargetMachineBuilder.h>
#include <llvm/Support/CommandLine.h>
#include <llvm/Support/DynamicLibrary.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/TargetParser/Host.h>

#include <cstdlib>
#include <mutex>
#include <string>

namespace gradc {

void Jit::initialiseLLVM() {
    static std::once_flag once;
    std::call_once(once, [] {
        // Loop strength reduction took a third of code generation time on the seed network
        // (100 of 280 ms) and did not make the step faster: its loops index plainly.
        const char* args[] = {"gradc", "-disable-lsr"};
        llvm::cl::ParseCommandLineOptions(2, args);
        llvm::InitializeNativeTarget();
        llvm::InitializeNativeTargetAsmPrinter();
        llvm::InitializeNativeTargetAsmParser();
    });
}

bool Jit::haveLibmvec() {
    static const bool loaded = [] {
        std::string err;
        return !llvm::sys::DynamicLibrary::LoadLibraryPermanently("libmvec.so.1", &err);
    }();
    return loaded;
}

const std::string& Jit::hostCpu() {
    static const std::string cpu = llvm::sys::getHostCPUName().str();
    return cpu;
}

/// The host's features for `isa`: all of them, or for "avx2" all but AVX-512, AVX10 and AMX
/// (AVX2 and FMA code on an AVX-512 CPU). Asked of the CPU once per process.
static const llvm::StringMap<bool>& hostFeatureMap(const std::string& isa) {
    static const llvm::StringMap<bool> native = llvm::sys::getHostCPUFeatures();
    static const llvm::StringMap<bool> avx2 = [] {
        llvm::StringMap<bool> f = native;
        for (auto& entry : f)
            if (entry.getKey().starts_with("avx512") || entry.getKey() == "evex512" ||
                entry.getKey().starts_with("avx10") || entry.getKey().starts_with("amx"))
                entry.setValue(false);
        return f;
    }();
    return isa == "avx2" ? avx2 : native;
}

const std::string& Jit::hostFeatures(const std::string& isa) {
    auto join = [](const std::string& which) {
        llvm::SubtargetFeatures features;
        for (auto& [name, on] : hostFeatureMap(which)) features.AddFeature(name, on);
        return features.getString();
    };
    static const std::string native = join("native"), avx2 = join("avx2");
    return isa == "avx2" ? avx2 : native;
}

bool Jit::hasFeature(llvm::StringRef feature) { return hostFeatureMap("native").lookup(feature); }

static llvm::orc::JITTargetMachineBuilder hostBuilder(const std::string& isa) {
    llvm::orc::JITTargetMachineBuilder jtmb{llvm::Triple(llvm::sys::getProcessTriple())};
    jtmb.setCPU(Jit::hostCpu());
    for (auto& [name, on] : hostFeatureMap(isa)) jtmb.getFeatures().AddFeature(name, on);
    jtmb.setCodeGenOptLevel(llvm::CodeGenOptLevel::Aggressive);
    return jtmb;
}

llvm::Expected<std::unique_ptr<llvm::TargetMachine>> Jit::targetMachine(const std::string& isa) {
    initialiseLLVM();
    return hostBuilder(isa).createTargetMachine();
}

llvm::Expected<std::unique_ptr<Jit>> Jit::create(const std::string& isa) {
    initialiseLLVM();
    haveLibmvec();
    auto jit = llvm::orc::LLJITBuilder().setJITTargetMachineBuilder(hostBuilder(isa)).create();
    if (!jit) return jit.takeError();
    auto process = llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(
        (*jit)->getDataLayout().getGlobalPrefix());
    if (!process) return process.takeError();
    (*jit)->getMainJITDylib().addGenerator(std::move(*process));
    // The runtime support compiled code calls: the thread pool's parallel loop, and the sums
    // of a data-parallel run's synchronised batchnorm.
    llvm::orc::SymbolMap runtime;
    runtime[(*jit)->mangleAndIntern("gradc_parallel_for")] = {
        llvm::orc::ExecutorAddr::fromPtr(&gradc_parallel_for), llvm::JITSymbolFlags::Exported};
    runtime[(*jit)->mangleAndIntern("gradc_allreduce_sum")] = {
        llvm::orc::ExecutorAddr::fromPtr(&gradc_allreduce_sum), llvm::JITSymbolFlags::Exported};
    runtime[(*jit)->mangleAndIntern("gradc_gradients_ready")] = {
        llvm::orc::ExecutorAddr::fromPtr(&gradc_gradients_ready), llvm::JITSymbolFlags::Exported};
    if (auto err = (*jit)->getMainJITDylib().define(llvm::orc::absoluteSymbols(std::move(runtime))))
        return err;
    return std::unique_ptr<Jit>(new Jit(std::move(*jit)));
}

llvm::Error Jit::addObject(std::unique_ptr<llvm::MemoryBuffer> object) {
    return jit_->addObjectFile(std::move(object));
}

llvm::Expected<void*> Jit::lookup(llvm::StringRef symbol) {
    auto addr = jit_->lookup(symbol);
    if (!addr) return addr.takeError();
    return addr->toPtr<void*>();
}

} // namespace gradc
