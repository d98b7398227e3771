// Plot.cpp — hand-written SVG: rectangles, polylines and text, nothing else.
#include "Plot.h"

#include "Text.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace gradc {
namespace {

constexpr double kPanelW = 300, kPanelH = 210, kPad = 46, kRowTitle = 34;
/// The most panels side by side in the gradient figure (2,400 pixels).
constexpr size_t kMaxColumns = 8;
const char* kColors[] = {"#2ca02c", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b"};

/// Names in the figure (a model is named after its file, which may hold any bytes) as XML
/// allows them.
std::string escape(const std::string& s) { return xmlText(s); }

std::string header(double w, double h) {
    return fmt::format("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                       "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" "
                       "viewBox=\"0 0 {:.0f} {:.0f}\" font-family=\"sans-serif\" font-size=\"11\">\n"
                       "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
                       w, h, w, h);
}

/// `attributes` (such as a transform) go into the element as they are.
std::string text(double x, double y, const std::string& s, const char* anchor = "middle",
                 int size = 11, const char* color = "black", const std::string& attributes = "") {
    return fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\" font-size=\"{}\" "
                       "fill=\"{}\"{}>{}</text>\n",
                       x, y, anchor, size, color, attributes.empty() ? "" : " " + attributes,
                       escape(s));
}

/// A line through `points` ("x,y x,y ..."); `attributes` (a class, data-*) lead the element.
std::string polyline(const std::string& points, const char* color, double width,
                     const std::string& attributes = "") {
    return fmt::format(
        "<polyline {}fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" points=\"{}\"/>\n",
        attributes.empty() ? "" : attributes + " ", color, width, points);
}

/// The frame of a panel at (x0, y0), `w` by `h`, with its plot area, title and axis labels.
struct Frame {
    double x0, y0, left, right, top, bottom;
    Frame(double x, double y, double w = kPanelW, double h = kPanelH)
        : x0(x), y0(y), left(x + kPad), right(x + w - 12), top(y + 26), bottom(y + h - 30) {}
    double px(double t) const { return left + t * (right - left); }   // t in [0, 1]
    double py(double t) const { return bottom - t * (bottom - top); } // t in [0, 1]
    /// The plot area's border, the title above it (none when empty), the x axis' label under
    /// it, and the y axis' turned upright on its left (none when empty).
    std::string draw(const std::string& title, const std::string& xlabel,
                     const std::string& ylabel = "") const {
        std::string svg =
            fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
                        "fill=\"none\" stroke=\"#444\"/>\n",
                        left, top, right - left, bottom - top);
        if (!title.empty()) svg += text((left + right) / 2, y0 + 16, title, "middle", 12);
        svg += text((left + right) / 2, bottom + 26, xlabel);
        const double mid = (top + bottom) / 2;
        if (!ylabel.empty())
            svg += text(left - 44, mid, ylabel, "middle", 11, "black",
                        fmt::format("transform=\"rotate(-90 {:.1f} {:.1f})\"", left - 44, mid));
        return svg;
    }
};

std::string number(double v) { return fmt::format("{:.2g}", v); }

constexpr double kChartH = 340, kChartMinW = 700, kLegendW = 250;

/// ‖dL/dh_t‖ against t on a log axis, one line per model and recurrent layer, at height y0 of
/// a figure `width` wide. Zeros and figures that are not finite have no place on a log axis:
/// they are left out of their line.
std::string throughTimeChart(double y0, double width, const std::vector<GradReport>& reports) {
    struct Line {
        const GradReport* model;
        const ThroughTime* layer;
        std::string label; // the model's name, and the layer's when the model has several
    };
    std::vector<Line> lines;
    for (auto& r : reports)
        for (auto& t : r.throughTime)
            lines.push_back({&r, &t, r.throughTime.size() > 1 ? r.model + " " + t.layer : r.model});
    PositiveRange range;
    size_t steps = 1;
    for (auto& l : lines)
        steps = std::max(steps, l.layer->norms.size()), range.add(l.layer->norms);
    if (range.empty())
        range.lo = range.hi = 1; // no positive norm at all: an empty chart over one decade
    const double lo = range.lo, hi = range.hi;
    // Whole decades cover the norms, at most about eight labelled.
    const int d0 = int(std::floor(std::log10(lo))),
              d1 = std::max(d0 + 1, int(std::ceil(std::log10(hi))));
    const int stride = std::max(1, (d1 - d0 + 7) / 8);
    // The plot area: 70 pixels for the decades on the left, the legend on the right.
    const Frame frame(24, y0 + 14, width - kLegendW - 12, kChartH - 30);
    const double left = frame.left, right = frame.right, bottom = frame.bottom, top = frame.top;
    auto px = [&](size_t t) {
        return steps > 1 ? left + double(t) / double(steps - 1) * (right - left)
                         : (left + right) / 2;
    };
    auto py = [&](double v) {
        return bottom - (std::log10(v) - d0) / double(d1 - d0) * (bottom - top);
    };

    std::string svg = "<g class=\"through-time\">\n";
    svg += text(width / 2, y0 + 24,
                "Gradient through time: ||dL/dh_t|| against the step t (log scale)", "middle", 14);
    for (int d = d0; d <= d1; d += stride) {
        const double y = py(std::pow(10.0, d));
        svg += fmt::format(
            "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n",
            left, y, right, y);
        svg += text(left - 4, y + 3, fmt::format("1e{}", d), "end", 9);
    }
    svg += frame.draw("", "step t", "||dL/dh_t||");
    svg += text(px(0), bottom + 13, "0", "middle", 9);
    if (steps > 1) svg += text(right, bottom + 13, std::to_string(steps - 1), "middle", 9);
    for (size_t i = 0; i < lines.size(); ++i) {
        const Line& l = lines[i];
        const char* color = kColors[i % std::size(kColors)];
        std::string pts;
        size_t count = 0, only = 0; // the points drawn, and the step of the last one
        for (size_t t = 0; t < l.layer->norms.size(); ++t) {
            const double v = l.layer->norms[t];
            if (std::isfinite(v) && v > 0)
                pts += fmt::format("{:.2f},{:.2f} ", px(t), py(v)), ++count, only = t;
        }
        svg +=
            polyline(pts, color, 1.5,
                     fmt::format("class=\"through-time-line\" data-model=\"{}\" data-layer=\"{}\"",
                                 escape(l.model->model), escape(l.layer->layer)));
        // A line of one point (one step, or one step left among zeros) is not drawn: a dot is.
        if (count == 1)
            svg += fmt::format("<circle class=\"through-time-dot\" cx=\"{:.2f}\" cy=\"{:.2f}\" "
                               "r=\"3\" fill=\"{}\"/>\n",
                               px(only), py(l.layer->norms[only]), color);
        const double ly = top + 8 + 16 * double(i);
        svg += fmt::format(
            "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
            "stroke-width=\"2\"/>\n",
            right + 12, ly, right + 32, ly, color);
        svg +=
            text(right + 38, ly + 4, fmt::format("{} ({})", l.label, l.layer->cell), "start", 11);
    }
    return svg + "</g>\n";
}

} // namespace

/// One histogram panel: bars scaled to the fullest bin, the range under the axis.
std::string histogramPanel(double x, double y, const std::string& title, const std::string& xLabel,
                           const TensorStats& s, const char* color) {
    Frame f(x, y);
    std::string svg = fmt::format("<g class=\"panel\" data-tensor=\"{}\">\n", escape(s.name));
    svg += f.draw(title, xLabel);
    int64_t most = 1;
    for (int64_t c : s.counts) most = std::max(most, c);
    const double bins = double(s.counts.size());
    for (size_t b = 0; b < s.counts.size(); ++b) {
        double h = double(s.counts[b]) / double(most);
        svg += fmt::format("<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\" "
                           "fill-opacity=\"0.8\" stroke=\"white\" stroke-width=\"0.3\"/>\n",
                           f.px(double(b) / bins), f.py(h), (f.right - f.left) / bins, f.bottom - f.py(h), color);
    }
    if (!s.edges.empty()) {
        svg += text(f.left, f.bottom + 13, number(s.edges.front()), "start", 9);
        svg += text(f.right, f.bottom + 13, number(s.edges.back()), "end", 9);
    }
    svg += text(f.left - 4, f.top + 8, std::to_string(most), "end", 9);
    svg += text(f.left - 4, f.bottom, "0", "end", 9);
    return svg + "</g>\n";
}

std::string gradientFigure(const std::vector<GradReport>& reports, const std::vector<std::string>& activationNames) {
    // A model's weights in rows of at most kMaxColumns panels: a 20-layer CNN's 20 weights take
    // three rows 2,400 pixels wide, not one row of 6,000 (the seed's networks keep one row).
    size_t columns = 1;
    std::vector<size_t> weights;
    for (auto& r : reports) {
        size_t n = 0;
        for (auto& s : r.params) n += isWeight(s.shape);
        weights.push_back(n);
        columns = std::max(columns, std::min(n, kMaxColumns));
    }
    bool recurrent = false; // a chart of the gradient through time under the histograms
    for (auto& r : reports)
        recurrent = recurrent || !r.throughTime.empty();
    const double width =
        recurrent ? std::max(double(columns) * kPanelW, kChartMinW) : double(columns) * kPanelW;
    auto rowHeight = [&](size_t n) { // a model's title and its panels' rows
        return kRowTitle + double(std::max<size_t>(1, (n + columns - 1) / columns)) * kPanelH;
    };
    double height = recurrent ? kChartH : 0;
    for (size_t n : weights) height += rowHeight(n);
    std::string svg = header(width, height);
    double y = 0;
    for (size_t row = 0; row < reports.size(); ++row) {
        const GradReport& r = reports[row];
        const std::string act = row < activationNames.size() ? activationNames[row] : r.model;
        svg += text(width / 2, y + 22, fmt::format("Gradient magnitude distribution for activation function {} ({})",
                                                   act, r.model), "middle", 14);
        size_t k = 0;
        for (auto& s : r.params) {
            if (!isWeight(s.shape)) continue; // weights only, as the seed's figure
            svg += histogramPanel(double(k % columns) * kPanelW, y + kRowTitle + double(k / columns) * kPanelH, s.name,
                                  "Grad magnitude", s, kColors[row % std::size(kColors)]);
            ++k;
        }
        y += rowHeight(weights[row]);
    }
    if (recurrent) svg += throughTimeChart(y, width, reports);
    return svg + "</svg>\n";
}

std::string histogramFigure(const std::string& title, const std::vector<std::pair<std::string, TensorStats>>& panels,
                            size_t columns) {
    columns = std::max<size_t>(1, std::min(columns, panels.size()));
    const size_t rows = (panels.size() + columns - 1) / columns;
    const double width = double(columns) * kPanelW;
    std::string svg = header(width, kRowTitle + double(rows) * kPanelH);
    svg += text(width / 2, 22, title, "middle", 14);
    for (size_t i = 0; i < panels.size(); ++i)
        svg += histogramPanel(double(i % columns) * kPanelW, kRowTitle + double(i / columns) * kPanelH,
                              panels[i].first, fmt::format("mean {:.3g}, var {:.3g}", panels[i].second.mean,
                                                           panels[i].second.std * panels[i].second.std),
                              panels[i].second, kColors[0]);
    return svg + "</svg>\n";
}

std::string activationFigure(const std::vector<Activation>& activations) {
    const size_t columns = std::min<size_t>(std::max<size_t>(activations.size(), 1), 4);
    const size_t rows = (activations.size() + columns - 1) / columns;
    std::string svg = header(double(columns) * kPanelW, double(std::max<size_t>(rows, 1)) * kPanelH + 10);
    for (size_t i = 0; i < activations.size(); ++i) {
        const Activation& a = activations[i];
        Frame f(double(i % columns) * kPanelW, double(i / columns) * kPanelH + 10);
        scalar::Evaluator fx(a.formula), dfx(a.derivative ? a.derivative : scalar::derivative(a.formula));
        std::vector<double> xs, ys, ds;
        for (int k = 0; k < 1000; ++k) {
            double x = -5 + 10.0 * k / 999;
            xs.push_back(x), ys.push_back(fx(x)), ds.push_back(dfx(x));
        }
        double lo = 0, hi = 1;
        for (size_t k = 0; k < xs.size(); ++k)
            for (double v : {ys[k], ds[k]})
                if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
        auto curve = [&](const std::vector<double>& v, const char* color) {
            std::string pts;
            for (size_t k = 0; k < xs.size(); ++k)
                if (std::isfinite(v[k]))
                    pts += fmt::format("{:.2f},{:.2f} ", f.px((xs[k] + 5) / 10), f.py((v[k] - lo) / (hi - lo)));
            return polyline(pts, color, 2);
        };
        svg += fmt::format("<g class=\"panel\" data-activation=\"{}\">\n", escape(a.name));
        svg += f.draw(a.name, "x");
        double zero = f.py((0 - lo) / (hi - lo));
        svg += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#bbb\"/>\n", f.left,
                           zero, f.right, zero);
        svg += curve(ys, "#1f77b4") + curve(ds, "#ff7f0e");
        svg += text(f.left + 8, f.top + 14, "ActFn", "start", 11, "#1f77b4") +
               text(f.left + 8, f.top + 28, "Gradient", "start", 11, "#ff7f0e");
        svg += text(f.left, f.bottom + 13, "-5", "start", 9) + text(f.right, f.bottom + 13, "5", "end", 9);
        svg += text(f.left - 4, f.top + 8, number(hi), "end", 9) + text(f.left - 4, f.bottom, number(lo), "end", 9);
        svg += "</g>\n";
    }
    return svg + "</svg>\n";
}

} // namespace gradc
