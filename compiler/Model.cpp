// Model.cpp — the public gradc::Model over the front end.
#include "ModelImpl.h"

namespace gradc {

Model Model::fromFile(const std::string& path) {
    return publicCall([&] {
        auto impl = std::make_shared<Impl>();
        impl->file = readSourceFile(path);
        impl->init();
        return Model(impl);
    });
}

Model Model::fromString(const std::string& name, const std::string& text) {
    return publicCall([&] {
        auto impl = std::make_shared<Impl>();
        impl->file = makeSourceFile(name, text);
        impl->init();
        return Model(impl);
    });
}

void Model::Impl::init() {
    ast = std::make_shared<Module>(parse(file));
    // The smallest batch every model accepts (training-mode batchnorm needs two examples);
    // a Session builds the graph again at its own batch size.
    graph = buildGraph(*ast, {2});
}

const std::string& Model::name() const { return impl().graph.model; }
int64_t Model::inputWidth() const { return impl().graph[0].shape[1]; }
int64_t Model::outputWidth() const { return impl().graph[impl().graph.output(OutputRole::Logits)].shape[1]; }
const std::string& Model::loss() const { return impl().graph.lossKind; }
int64_t Model::parameterCount() const { return impl().graph.parameterCount(); }

std::vector<ParameterInfo> Model::parameters() const {
    std::vector<ParameterInfo> out;
    int64_t offset = 0;
    for (auto& p : impl().graph.params) {
        const Shape& s = impl().graph[p.node].shape;
        out.push_back({p.name, s, offset, elementCount(s)});
        offset += elementCount(s);
    }
    return out;
}

std::vector<ParameterInfo> Model::buffers() const {
    std::vector<ParameterInfo> out;
    int64_t offset = impl().graph.parameterCount();
    for (auto& b : impl().graph.buffers) {
        out.push_back({b.name, {b.size}, offset, b.size});
        offset += b.size;
    }
    return out;
}

} // namespace gradc
