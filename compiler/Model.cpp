// Model.cpp — the public gradc::Model over the front end.
#include "Layout.h"
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
    ast = std::make_shared<ModuleAST>(parse(file));
    // The smallest batch every model accepts (training-mode batchnorm needs two examples);
    // a Session builds the graph again at its own batch size.
    graph = buildGraph(*ast, {2});
}

const std::string& Model::name() const { return impl().graph.model; }
int64_t Model::inputWidth() const { return perExample(impl().graph[0].shape); }
std::vector<int64_t> Model::inputShape() const {
    const Shape& x = impl().graph[0].shape;
    return std::vector<int64_t>(x.begin() + 1, x.end());
}
int64_t Model::outputWidth() const { return impl().graph[impl().graph.output(OutputRole::Logits)].shape[1]; }
const std::string& Model::loss() const { return impl().graph.lossKind; }
int64_t Model::parameterCount() const { return impl().graph.parameterCount(); }

std::vector<ParameterInfo> Model::parameters() const {
    std::vector<ParameterInfo> out;
    const Layout layout = computeLayout(impl().graph); // the entries point into it
    for (const LayoutEntry* e : layout.all(Role::Parameter))
        out.push_back({e->name, e->shape, e->offset, e->elements()});
    return out;
}

std::vector<ParameterInfo> Model::buffers() const {
    std::vector<ParameterInfo> out;
    const Layout layout = computeLayout(impl().graph); // the entries point into it
    for (const LayoutEntry* e : layout.all(Role::RunningStat))
        out.push_back({e->name, e->shape, e->offset, e->elements()});
    return out;
}

} // namespace gradc
