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

/// The host's features; with GRADC_ISA=avx2, without AVX-512 (code for x86-64-v3 on this
/// CPU, to measure it). Codegen.cpp refuses other values. Asked of the CPU once per process.
static const llvm::StringMap<bool>& hostFeatureMap() {
    static const llvm::StringMap<bool> features = [] {
        llvm::StringMap<bool> f = llvm::sys::getHostCPUFeatures();
        const char* isa = std::getenv("GRADC_ISA");
        if (isa && std::string(isa) == "avx2")
            for (auto& entry : f)
                if (entry.getKey().starts_with("avx512") || entry.getKey() == "evex512" ||
                    entry.getKey().starts_with("avx10") || entry.getKey().starts_with("amx"))
                    entry.setValue(false);
        return f;
    }();
    return features;
}

const std::string& Jit::hostFeatures() {
    static const std::string string = [] {
        llvm::SubtargetFeatures features;
        for (auto& [name, on] : hostFeatureMap()) features.AddFeature(name, on);
        return features.getString();
    }();
    return string;
}

static llvm::orc::JITTargetMachineBuilder hostBuilder() {
    llvm::orc::JITTargetMachineBuilder jtmb(llvm::Triple(llvm::sys::getProcessTriple()));
    jtmb.setCPU(Jit::hostCpu());
    for (auto& [name, on] : hostFeatureMap()) jtmb.getFeatures().AddFeature(name, on);
    jtmb.setCodeGenOptLevel(llvm::CodeGenOptLevel::Aggressive);
    return jtmb;
}

llvm::Expected<std::unique_ptr<llvm::TargetMachine>> Jit::targetMachine() {
    initialiseLLVM();
    return hostBuilder().createTargetMachine();
}

llvm::Expected<std::unique_ptr<Jit>> Jit::create() {
    initialiseLLVM();
    haveLibmvec();
    auto jit = llvm::orc::LLJITBuilder().setJITTargetMachineBuilder(hostBuilder()).create();
    if (!jit) return jit.takeError();
    auto process = llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(
        (*jit)->getDataLayout().getGlobalPrefix());
    if (!process) return process.takeError();
    (*jit)->getMainJITDylib().addGenerator(std::move(*process));
    // The runtime support compiled code calls: the thread pool's parallel loop.
    llvm::orc::SymbolMap runtime;
    runtime[(*jit)->mangleAndIntern("gradc_parallel_for")] = {
        llvm::orc::ExecutorAddr::fromPtr(&gradc_parallel_for), llvm::JITSymbolFlags::Exported};
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
