// gradc/Model.h — a model file, parsed and checked: the first step of embedding gradc.
//
//   gradc::Model model = gradc::Model::fromFile("models/seed_sigmoid.nn");
//   gradc::Session session(model, /*batch=*/256);        // <gradc/Session.h>
//   session.initialiseParameters(/*seed=*/42);
//   float loss = session.backward(images, labels);       // your buffers
//   for (auto& s : session.gradientStatistics()) ...
//
// No LLVM (or other dependency) types appear in these headers.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace gradc {

/// Every failure gradc reports to an embedding program: a mistake in a model, data or
/// parameter file (the message names the file and place, as the command line prints it), or
/// a misuse of the API.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// A parameter tensor: PyTorch's name and [out, in] shape, and where it sits in the flat
/// parameter (and gradient) array.
struct ParameterInfo {
    std::string name;
    std::vector<int64_t> shape;
    int64_t offset = 0;
    int64_t count = 0;
};

/// A Model is immutable: copies share it, and any number of threads may read it and build
/// Sessions from it at once. Every call on a Model that was moved from throws gradc::Error.
class Model {
public:
    /// Parses and checks a model file; throws gradc::Error with the diagnostic.
    static Model fromFile(const std::string& path);
    /// The same for model text held in memory; `name` stands for the file in diagnostics.
    static Model fromString(const std::string& name, const std::string& text);

    const std::string& name() const;
    /// Values of one example's input: 784 for `input 784`, `input 28x28` and `input 1x28x28`.
    int64_t inputWidth() const;
    /// One example's input as the model declares it: {784}, {28, 28}, or an image {1, 28, 28}
    /// (channels, height, width). x is [batch, ...this] row-major: for images PyTorch's NCHW.
    std::vector<int64_t> inputShape() const;
    int64_t outputWidth() const;
    const std::string& loss() const; ///< cross_entropy, bce or mse
    std::vector<ParameterInfo> parameters() const;
    int64_t parameterCount() const;
    /// Tensors kept but not trained (batchnorm's running_mean and running_var, PyTorch's
    /// buffers); `offset` counts from the start of the state array, after the parameters.
    std::vector<ParameterInfo> buffers() const;

    struct Impl;
    /// Throws gradc::Error for a Model that was moved from.
    const Impl& impl() const {
        if (!impl_) throw Error("gradc: error: Model: this Model was moved from");
        return *impl_;
    }

private:
    explicit Model(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
    std::shared_ptr<const Impl> impl_;
};

} // namespace gradc
