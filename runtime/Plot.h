// Plot.h — the seed's two figures: per-layer gradient histograms (with recurrent models'
// gradients through time), and activation functions with their derivatives; each a Figure,
// written as SVG, PDF or PNG.
#pragma once

#include "Activations.h"
#include "Figure.h"
#include "Report.h"

#include <string>
#include <vector>

namespace gradc {

/// First the gradient flow: every model's mean |gradient| per weight tensor against depth on
/// one log axis (a polyline of class "flow-line" per model, the vanishing factor in the
/// legend). Then one row of histogram panels per model (rows of at most eight panels for a
/// deeper one): one panel per weight tensor (30 bins, the tensor's name as the panel title),
/// under a title naming the model's activation. When a model has recurrent layers, a chart under the
/// histograms: ‖dL/dh_t‖ against t on a log axis, one line per model and recurrent layer
/// (a polyline of class "through-time-line"), the legend naming the model (and the layer when
/// the model has several).
/// With `logScale`, the histograms are of log10|g| over decades all the panels share, so that
/// they can be compared (a vanishing layer's bars sit decades to the left of the last
/// layer's); the exact zeros are counted in each panel's corner.
Figure gradientFigure(const std::vector<GradReport>& reports, const std::vector<std::string>& activationNames,
                      bool logScale = false);

/// The gradient flow alone, sized for a paper's column: drawn 520 units wide (PDF: points)
/// with no title, tick labels of 13.5 units and legend text of 16.5 (6.5 and 8 pt when the
/// figure is scaled to a 3.5-inch column), the legend under the plot.
Figure flowFigure(const std::vector<GradReport>& reports, const std::vector<std::string>& activationNames);

/// A grid of histogram panels (`columns` wide) under one title: `gradc acts`.
Figure histogramFigure(const std::string& title, const std::vector<std::pair<std::string, TensorStats>>& panels,
                       size_t columns);

struct RunLog;
/// `gradc plot`: training runs side by side. Their loss (training and validation) and
/// validation accuracy against the step, one colour per run; then for each run the gradient
/// flow over training, each weight tensor's mean |gradient| against the step (log scale, one
/// line per layer, coloured input to output), and the same as a heat map (a row per layer, a
/// column per logged point), on decades and colours all the runs share.
Figure trainingFigure(const std::vector<RunLog>& runs);

/// One panel per activation: f and f' on [-5, 5], as the seed's first figure.
Figure activationFigure(const std::vector<Activation>& activations);

} // namespace gradc
