// Plot.cpp — the figures, drawn on a Figure (Figure.h: SVG, PDF or PNG): rectangles, lines,
// polylines, dots and text, nothing else.
#include "Plot.h"

#include "RunLog.h"

#include "Text.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>

namespace gradc {
namespace {

constexpr double kPanelW = 300, kPanelH = 210, kPad = 46, kRowTitle = 34;
/// The most panels side by side in the gradient figure (2,400 pixels).
constexpr size_t kMaxColumns = 8;
const char* kColors[] = {"#2ca02c", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b"};

/// One colour per activation, the same in every figure: the seed's figure's green for
/// sigmoid and blue for relu, then the others; an activation not listed (a model's own, or a
/// model of several) takes one of kColors by its name.
std::string activationColor(const std::string& activation) {
    static const std::pair<const char*, const char*> kKnown[] = {
        {"sigmoid", "#2ca02c"}, {"relu", "#1f77b4"},  {"tanh", "#ff7f0e"},     {"leaky_relu", "#d62728"},
        {"elu", "#9467bd"},     {"swish", "#8c564b"}, {"gelu", "#e377c2"},     {"softplus", "#17becf"},
        {"lstm", "#bcbd22"},    {"gru", "#7f7f7f"},   {"identity", "#393b79"},
    };
    const std::string base = activation.substr(0, activation.find('('));
    for (auto [name, color] : kKnown)
        if (base == name) return color;
    size_t h = 0;
    for (unsigned char c : activation) h = h * 31 + c;
    return kColors[h % std::size(kColors)];
}

using Anchor = Figure::Anchor;

/// A model's name as a data attribute's value (it is named after its file, which may hold
/// any bytes).
std::string escape(const std::string& s) { return xmlText(s); }

/// The frame of a panel at (x0, y0), `w` by `h`, with its plot area, title and axis labels,
/// its text (and the margins the text takes) `text` times the screen's sizes.
struct Frame {
    double x0, y0, text, left, right, top, bottom;
    Frame(double x, double y, double w = kPanelW, double h = kPanelH, double textScale = 1)
        : x0(x), y0(y), text(textScale), left(x + kPad * textScale), right(x + w - 12), top(y + 26 * textScale),
          bottom(y + h - 30 * textScale) {}
    double px(double t) const { return left + t * (right - left); }   // t in [0, 1]
    double py(double t) const { return bottom - t * (bottom - top); } // t in [0, 1]
    /// The plot area's border, the title above it (none when empty), the x axis' label under
    /// it, and the y axis' turned upright on its left (none when empty).
    void draw(Figure& fig, const std::string& title, const std::string& xlabel, const std::string& ylabel = "") const {
        fig.rect(left, top, right - left, bottom - top, "none", "#444");
        if (!title.empty()) fig.text((left + right) / 2, y0 + 16 * text, title, Anchor::Middle, 12 * text);
        fig.text((left + right) / 2, bottom + 26 * text, xlabel, Anchor::Middle, 11 * text);
        const double mid = (top + bottom) / 2;
        if (!ylabel.empty()) fig.text(left - 44 * text, mid, ylabel, Anchor::Middle, 11 * text, "black", -90);
    }
};

std::string number(double v) { return fmt::format("{:.2g}", v); }

constexpr double kChartH = 340, kChartMinW = 700, kLegendW = 250, kFlowH = 360, kFlowLegendW = 360,
                 kFlowMinW = 800;
/// The gradient-flow chart alone, for a paper: 520 units wide with text 1.5 times the screen's,
/// so that at a column's width (3.5 in, 252 pt) its smallest text (tick labels, 13.5 units)
/// is 6.5 pt and its legend 8 pt.
constexpr double kPaperW = 520, kPaperFlowH = 330, kPaperText = 1.5;

/// Whole decades [d0, d1] covering `range` (one decade when it is empty), and the stride of
/// their labels: at most about eight.
struct Decades {
    int d0 = 0, d1 = 1, stride = 1;
    explicit Decades(const PositiveRange& range) {
        const double lo = range.empty() ? 1 : range.lo, hi = range.empty() ? 1 : range.hi;
        d0 = int(std::floor(std::log10(lo)));
        d1 = std::max(d0 + 1, int(std::ceil(std::log10(hi))));
        stride = std::max(1, (d1 - d0 + 7) / 8);
    }
    /// Where v lies on the decades, as a share of them (0 at 1e{d0}, 1 at 1e{d1}).
    double share(double v) const { return (std::log10(v) - d0) / double(d1 - d0); }
};

/// A tick of a frame's x axis at t in [0, 1], with its label under it.
void xTick(Figure& fig, const Frame& f, double t, const std::string& label) {
    const double x = f.px(t);
    fig.line(x, f.bottom, x, f.bottom + 3 * f.text, "#444");
    fig.text(x, f.bottom + 13 * f.text, label, Anchor::Middle, 9 * f.text);
}

/// A tick of a frame's y axis at t in [0, 1], with its label on the left; a light grid line
/// across the plot area instead of the mark when `grid`.
void yTick(Figure& fig, const Frame& f, double t, const std::string& label, bool grid = false) {
    const double y = f.py(t);
    if (grid)
        fig.line(f.left, y, f.right, y, "#e4e4e4");
    else
        fig.line(f.left - 3 * f.text, y, f.left, y, "#444");
    fig.text(f.left - 5 * f.text, y + 3 * f.text, label, Anchor::End, 9 * f.text);
}

/// A log y axis: a grid line and a label at each labelled decade.
void decadeAxis(Figure& fig, const Frame& f, const Decades& dec) {
    for (int d = dec.d0; d <= dec.d1; d += dec.stride) yTick(fig, f, dec.share(std::pow(10.0, d)), fmt::format("1e{}", d), true);
}

/// A marker of one of four shapes (a model's, by its place in the run) centred at (x, y).
void marker(Figure& fig, size_t shape, double x, double y, const std::string& color, const std::string& attributes) {
    const double r = 4;
    switch (shape % 4) {
    case 0: fig.circle(x, y, r, color, attributes); break;
    case 1: fig.polygon({{x - r, y - r}, {x + r, y - r}, {x + r, y + r}, {x - r, y + r}}, color, attributes); break;
    case 2: fig.polygon({{x, y - r - 1}, {x + r + 1, y + r}, {x - r - 1, y + r}}, color, attributes); break;
    default: fig.polygon({{x, y - r - 1}, {x + r + 1, y}, {x, y + r + 1}, {x - r - 1, y}}, color, attributes); break;
    }
}

/// The gradient flow: each model's mean |gradient| of its weight tensors (log scale) against
/// their depth, input to output, one line and marker shape per model, coloured by its
/// activation, the vanishing factor in the legend. Means that are zero or not finite are left
/// out of their line. On the screen (in the gradient figure, at height y0 of a figure `width`
/// wide): a title, the legend on the right. For a paper (`paper`, flowFigure): no title (the
/// caption says it), text 1.5 times larger, the legend under the plot.
void flowChart(Figure& fig, double y0, double width, const std::vector<GradReport>& reports,
               const std::vector<std::string>& activationNames, bool paper = false) {
    std::vector<std::vector<double>> means; // per model, its weights' in order
    PositiveRange range;
    size_t depth = 1;
    for (auto& r : reports) {
        std::vector<double>& m = means.emplace_back();
        for (auto& p : r.params)
            if (isWeight(p.shape)) m.push_back(p.absMean);
        range.add(m), depth = std::max(depth, m.size());
    }
    const Decades dec(range);
    const double text = paper ? kPaperText : 1;
    const Frame frame = paper ? Frame(6, y0, width - 6, kPaperFlowH, text)
                              : Frame(24, y0 + 14, width - kFlowLegendW - 12, kFlowH - 30);
    auto px = [&](size_t k) { // weight k (0-based) of at most `depth`, as a share of the axis
        return depth > 1 ? double(k) / double(depth - 1) : 0.5;
    };
    auto py = [&](double v) { return frame.py(dec.share(v)); };

    fig.begin("class=\"gradient-flow\"");
    if (!paper)
        fig.text(width / 2, y0 + 24, "Gradient flow: mean |gradient| of each layer's weights (log scale)",
                 Anchor::Middle, 14);
    decadeAxis(fig, frame, dec);
    const size_t every = std::max<size_t>(1, (depth + 11) / 12); // at most about twelve labels
    for (size_t k = 0; k < depth; k += every) xTick(fig, frame, px(k), std::to_string(k + 1));
    frame.draw(fig, "", "weight tensor, input to output", "mean |gradient|");
    for (size_t i = 0; i < reports.size(); ++i) {
        const GradReport& r = reports[i];
        const std::string act = i < activationNames.size() ? activationNames[i] : r.model;
        const std::string color = activationColor(act);
        const std::string data = fmt::format("data-model=\"{}\"", escape(r.model));
        Figure::Points pts;
        for (size_t k = 0; k < means[i].size(); ++k)
            if (std::isfinite(means[i][k]) && means[i][k] > 0) pts.emplace_back(frame.px(px(k)), py(means[i][k]));
        fig.polyline(pts, color.c_str(), 1.5 * text, "class=\"flow-line\" " + data);
        for (auto [x, y] : pts) marker(fig, i, x, y, color, "class=\"flow-point\" " + data);
        // The legend: on the right of the plot, or under it for a paper.
        const double lx = paper ? frame.left : frame.right + 12,
                     ly = paper ? frame.bottom + 44 * text + 16 * text * double(i) : frame.top + 10 + 18 * double(i);
        fig.line(lx, ly, lx + 24, ly, color, 1.5 * text);
        marker(fig, i, lx + 12, ly, color, "");
        fig.text(lx + 30, ly + 4 * text,
                 std::isfinite(r.vanishingFactor)
                     ? fmt::format("{} ({}): vanishing factor {:.2e}", r.model, act, r.vanishingFactor)
                     : fmt::format("{} ({})", r.model, act),
                 Anchor::Start, 11 * text);
    }
    fig.end();
}

/// ‖dL/dh_t‖ against t on a log axis, one line per model and recurrent layer, at height y0 of
/// a figure `width` wide. Zeros and figures that are not finite have no place on a log axis:
/// they are left out of their line.
void throughTimeChart(Figure& fig, double y0, double width, const std::vector<GradReport>& reports) {
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
    const Decades dec(range); // one decade when no norm is positive: an empty chart
    // The plot area: the decades on the left, the legend on the right.
    const Frame frame(24, y0 + 14, width - kLegendW - 12, kChartH - 30);
    const double left = frame.left, right = frame.right, top = frame.top;
    auto px = [&](size_t t) {
        return steps > 1 ? left + double(t) / double(steps - 1) * (right - left)
                         : (left + right) / 2;
    };
    auto py = [&](double v) { return frame.py(dec.share(v)); };

    fig.begin("class=\"through-time\"");
    fig.text(width / 2, y0 + 24, "Gradient through time: ||dL/dh_t|| against the step t (log scale)",
             Anchor::Middle, 14);
    decadeAxis(fig, frame, dec);
    frame.draw(fig, "", "step t", "||dL/dh_t||");
    xTick(fig, frame, steps > 1 ? 0 : 0.5, "0");
    if (steps > 1) xTick(fig, frame, 1, std::to_string(steps - 1));
    for (size_t i = 0; i < lines.size(); ++i) {
        const Line& l = lines[i];
        const char* color = kColors[i % std::size(kColors)];
        Figure::Points pts;
        size_t only = 0; // the step of the last point drawn
        for (size_t t = 0; t < l.layer->norms.size(); ++t) {
            const double v = l.layer->norms[t];
            if (std::isfinite(v) && v > 0) pts.emplace_back(px(t), py(v)), only = t;
        }
        fig.polyline(pts, color, 1.5,
                     fmt::format("class=\"through-time-line\" data-model=\"{}\" data-layer=\"{}\"",
                                 escape(l.model->model), escape(l.layer->layer)));
        // A line of one point (one step, or one step left among zeros) is not drawn: a dot is.
        if (pts.size() == 1)
            fig.circle(px(only), py(l.layer->norms[only]), 3, color, "class=\"through-time-dot\"");
        const double ly = top + 8 + 16 * double(i);
        fig.line(right + 12, ly, right + 32, ly, color, 2);
        fig.text(right + 38, ly + 4, fmt::format("{} ({})", l.label, l.layer->cell), Anchor::Start, 11);
    }
    fig.end();
}

/// A step of 1, 2 or 5 times a power of ten, at least span / ticks.
double niceStep(double span, int ticks) {
    const double raw = span / ticks, mag = std::pow(10.0, std::floor(std::log10(raw)));
    for (double m : {1.0, 2.0, 5.0})
        if (m * mag >= raw * (1 - 1e-9)) return m * mag;
    return 10 * mag;
}

/// The decades of log10|g| that every panel of a figure shares (--plot-scale log).
struct LogAxis {
    int d0 = 0, d1 = 1;
};

/// The shared decades covering the non-zero gradients of every weight of `reports`.
LogAxis logAxis(const std::vector<GradReport>& reports) {
    // The tenth-decade bins (absolute: bin b holds b/10 <= log10|g| < (b+1)/10) in use.
    int first = std::numeric_limits<int>::max(), last = std::numeric_limits<int>::min();
    for (auto& r : reports)
        for (auto& p : r.params)
            if (isWeight(p.shape))
                for (int i = 0; i < int(p.logCounts.size()); ++i)
                    if (p.logCounts[size_t(i)])
                        first = std::min(first, p.logFirst + i), last = std::max(last, p.logFirst + i);
    if (first > last) return {}; // no non-zero gradient: one decade
    auto decadeOf = [](int bin) { // floor(bin / 10), for negative bins too
        return bin >= 0 ? bin / TensorStats::kLogPerDecade : -((-bin + TensorStats::kLogPerDecade - 1) / TensorStats::kLogPerDecade);
    };
    LogAxis a;
    a.d0 = decadeOf(first);
    a.d1 = std::max(a.d0 + 1, decadeOf(last) + 1);
    return a;
}

/// One histogram panel: bars scaled to the fullest bin, with ticks on both axes. The x axis is
/// the values, linear over [min, max] with a line at zero, or log10|g| over the decades `log`
/// gives every panel (the zeros counted in the corner). The count axis is logarithmic where
/// one bin holds most of the entries (a ReLU's spike at zero would hide the tails).
void histogramPanel(Figure& fig, double x, double y, const std::string& title, const std::string& xLabel,
                    const TensorStats& s, const std::string& color, const LogAxis* log = nullptr) {
    Frame f(x, y);
    fig.begin(fmt::format("class=\"panel\" data-tensor=\"{}\"", escape(s.name)));
    f.draw(fig, title, xLabel);
    // The bars: the linear histogram, or the tenth-decade bins in the shared decades, merged
    // into bars of a whole number of bins (at most about 60 bars).
    std::vector<int64_t> bars;
    if (log) {
        const int per = TensorStats::kLogPerDecade, fine = (log->d1 - log->d0) * per;
        const int group = std::max(1, (fine + 59) / 60);
        const int from = log->d0 * per - s.logFirst; // the panel's first bar in s.logCounts
        bars.assign(size_t((fine + group - 1) / group), 0);
        for (int i = 0; i < fine; ++i)
            if (from + i >= 0 && from + i < int(s.logCounts.size())) bars[size_t(i / group)] += s.logCounts[size_t(from + i)];
    } else {
        bars = s.counts;
    }
    int64_t most = 1, total = 0;
    for (int64_t c : bars) most = std::max(most, c), total += c;
    const bool logCount = most > 100 && 2 * most > total; // a spike: most entries in one bar
    auto height = [&](double c) { // of a count, as a share of the plot area
        return logCount ? std::log10(1 + c) / std::log10(1 + double(most)) : c / double(most);
    };
    const double n = double(bars.size());
    for (size_t b = 0; b < bars.size(); ++b) {
        const double h = height(double(bars[b]));
        if (h > 0)
            fig.rect(f.px(double(b) / n), f.py(h), (f.right - f.left) / n, f.bottom - f.py(h), color, "white", 0.3,
                     0.8);
    }
    // The count axis: 0 and nice steps, or powers of ten.
    if (logCount) {
        for (double c = 1; c <= double(most); c *= 10)
            yTick(fig, f, height(c), c < 1e4 ? fmt::format("{:g}", c) : fmt::format("1e{:.0f}", std::log10(c)));
    } else {
        const double step = std::max(1.0, std::round(niceStep(double(most), 3)));
        for (double c = 0; c <= double(most); c += step) yTick(fig, f, height(c), fmt::format("{:.0f}", c));
    }
    // The value axis.
    if (log) {
        const int decades = log->d1 - log->d0, stride = std::max(1, (decades + 4) / 5);
        for (int d = log->d0; d <= log->d1; d += stride) xTick(fig, f, double(d - log->d0) / decades, fmt::format("1e{}", d));
        if (s.zeros) fig.text(f.right - 4, f.top + 12, fmt::format("zeros: {}", s.zeros), Anchor::End, 9);
    } else if (!s.edges.empty() && s.max > s.min) {
        // Ticks counted, not stepped: over a range of a few ulps a step would not move t.
        const double lo = s.edges.front(), hi = s.edges.back(), step = niceStep(hi - lo, 4), t0 = std::ceil(lo / step) * step;
        for (int i = 0; i <= 10 && t0 + i * step <= hi + step * 1e-9; ++i) {
            const double t = t0 + i * step;
            xTick(fig, f, (t - lo) / (hi - lo), number(std::fabs(t) < step * 1e-9 ? 0 : t));
        }
        if (lo < 0 && hi > 0) {
            const double zx = f.px(-lo / (hi - lo));
            fig.line(zx, f.top, zx, f.bottom, "#888", 0.8);
        }
    }
    fig.end();
}

} // namespace

Figure gradientFigure(const std::vector<GradReport>& reports, const std::vector<std::string>& activationNames,
                      bool logScale) {
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
    const double width = std::max(double(columns) * kPanelW, kFlowMinW);
    auto rowHeight = [&](size_t n) { // a model's title and its panels' rows
        return kRowTitle + double(std::max<size_t>(1, (n + columns - 1) / columns)) * kPanelH;
    };
    double height = kFlowH + (recurrent ? kChartH : 0);
    for (size_t n : weights) height += rowHeight(n);
    Figure fig(width, height);
    // The gradient flow first, then each model's histograms, then the gradient through time.
    flowChart(fig, 0, width, reports, activationNames);
    const LogAxis axis = logAxis(reports);
    double y = kFlowH;
    for (size_t row = 0; row < reports.size(); ++row) {
        const GradReport& r = reports[row];
        const std::string act = row < activationNames.size() ? activationNames[row] : r.model;
        fig.text(width / 2, y + 22,
                 fmt::format("Gradient magnitude distribution for activation function {} ({})", act, r.model),
                 Anchor::Middle, 14);
        size_t k = 0;
        for (auto& s : r.params) {
            if (!isWeight(s.shape)) continue; // weights only, as the seed's figure
            histogramPanel(fig, double(k % columns) * kPanelW, y + kRowTitle + double(k / columns) * kPanelH, s.name,
                           logScale ? "|gradient|, log scale" : "gradient", s, activationColor(act),
                           logScale ? &axis : nullptr);
            ++k;
        }
        y += rowHeight(weights[row]);
    }
    if (recurrent) throughTimeChart(fig, y, width, reports);
    return fig;
}

Figure flowFigure(const std::vector<GradReport>& reports, const std::vector<std::string>& activationNames) {
    const double legend = 16 * kPaperText * double(reports.size());
    Figure fig(kPaperW, kPaperFlowH + 30 * kPaperText + legend + 8);
    flowChart(fig, 0, kPaperW, reports, activationNames, /*paper=*/true);
    return fig;
}

Figure histogramFigure(const std::string& title, const std::vector<std::pair<std::string, TensorStats>>& panels,
                       size_t columns) {
    columns = std::max<size_t>(1, std::min(columns, panels.size()));
    const size_t rows = (panels.size() + columns - 1) / columns;
    const double width = double(columns) * kPanelW;
    Figure fig(width, kRowTitle + double(rows) * kPanelH);
    fig.text(width / 2, 22, title, Anchor::Middle, 14);
    for (size_t i = 0; i < panels.size(); ++i)
        histogramPanel(fig, double(i % columns) * kPanelW, kRowTitle + double(i / columns) * kPanelH,
                       panels[i].first,
                       fmt::format("mean {:.3g}, var {:.3g}", panels[i].second.mean,
                                   panels[i].second.std * panels[i].second.std),
                       panels[i].second, kColors[0]);
    return fig;
}

Figure activationFigure(const std::vector<Activation>& activations) {
    const size_t columns = std::min<size_t>(std::max<size_t>(activations.size(), 1), 4);
    const size_t rows = (activations.size() + columns - 1) / columns;
    Figure fig(double(columns) * kPanelW, double(std::max<size_t>(rows, 1)) * kPanelH + 10);
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
            Figure::Points pts;
            for (size_t k = 0; k < xs.size(); ++k)
                if (std::isfinite(v[k])) pts.emplace_back(f.px((xs[k] + 5) / 10), f.py((v[k] - lo) / (hi - lo)));
            fig.polyline(pts, color, 2);
        };
        fig.begin(fmt::format("class=\"panel\" data-activation=\"{}\"", escape(a.name)));
        f.draw(fig, a.name, "x");
        double zero = f.py((0 - lo) / (hi - lo));
        fig.line(f.left, zero, f.right, zero, "#bbb");
        curve(ys, "#1f77b4"), curve(ds, "#ff7f0e");
        fig.text(f.left + 8, f.top + 14, "ActFn", Anchor::Start, 11, "#1f77b4");
        fig.text(f.left + 8, f.top + 28, "Gradient", Anchor::Start, 11, "#ff7f0e");
        fig.text(f.left, f.bottom + 13, "-5", Anchor::Start, 9), fig.text(f.right, f.bottom + 13, "5", Anchor::End, 9);
        fig.text(f.left - 4, f.top + 8, number(hi), Anchor::End, 9);
        fig.text(f.left - 4, f.bottom, number(lo), Anchor::End, 9);
        fig.end();
    }
    return fig;
}

namespace {

constexpr double kTrainPanelW = 600, kTrainPanelH = 330;

/// Viridis at t in [0, 1], between five of its colours: dark blue (small) to yellow (large).
std::string viridis(double t) {
    static const double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
    t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4;
    const int i = std::min(3, int(t));
    const double f = t - i;
    int c[3];
    for (int k = 0; k < 3; ++k) c[k] = int(std::lround(stops[i][k] + f * (stops[i + 1][k] - stops[i][k])));
    return fmt::format("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
}

/// A panel's x axis over [0, hi] steps with nice ticks.
void stepAxis(Figure& fig, const Frame& f, double hi) {
    const double step = niceStep(std::max(hi, 1.0), 5);
    for (double t = 0; t <= hi + step * 1e-9; t += step) xTick(fig, f, hi > 0 ? t / hi : 0, fmt::format("{:g}", t));
}

/// A linear y axis over [lo, hi] with nice ticks and light grid lines.
void valueAxis(Figure& fig, const Frame& f, double lo, double hi) {
    const double step = niceStep(hi - lo, 4);
    for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
        yTick(fig, f, (v - lo) / (hi - lo), fmt::format("{:g}", std::fabs(v) < step * 1e-9 ? 0 : v), true);
}

} // namespace

Figure trainingFigure(const std::vector<RunLog>& runs) {
    const double width = 2 * kTrainPanelW;
    Figure fig(width, kTrainPanelH * double(1 + runs.size()));
    double lastStep = 1, lossHi = 0;
    PositiveRange means;
    for (auto& r : runs) {
        lastStep = std::max(lastStep, r.steps.back());
        if (!r.gradSteps.empty()) lastStep = std::max(lastStep, r.gradSteps.back());
        for (double v : r.trainLoss) lossHi = std::isfinite(v) ? std::max(lossHi, v) : lossHi;
        for (double v : r.valLoss) lossHi = std::isfinite(v) ? std::max(lossHi, v) : lossHi;
        for (auto& m : r.meanAbs) means.add(m);
    }
    if (!(lossHi > 0)) lossHi = 1;
    const double lossStep = niceStep(lossHi, 4);
    lossHi = std::ceil(lossHi / lossStep) * lossStep;
    auto curve = [&](const Frame& f, const std::vector<double>& steps, const std::vector<double>& v,
                     const std::function<double(double)>& y, const std::string& color, double w, const std::string& attributes) {
        Figure::Points pts;
        for (size_t i = 0; i < v.size(); ++i)
            if (std::isfinite(v[i])) pts.emplace_back(f.px(steps[i] / lastStep), y(v[i]));
        fig.polyline(pts, color, w, attributes);
        return pts;
    };
    // The loss (training thin, validation thick) and the validation accuracy of every run.
    const Frame loss(24, 0, kTrainPanelW - 24, kTrainPanelH), acc(kTrainPanelW + 24, 0, kTrainPanelW - 24, kTrainPanelH);
    fig.begin("class=\"curves\"");
    valueAxis(fig, loss, 0, lossHi);
    valueAxis(fig, acc, 0, 1);
    loss.draw(fig, "Loss (thin: training, thick: validation)", "step", "loss");
    acc.draw(fig, "Validation accuracy", "step", "accuracy");
    stepAxis(fig, loss, lastStep), stepAxis(fig, acc, lastStep);
    for (size_t i = 0; i < runs.size(); ++i) {
        const RunLog& r = runs[i];
        const std::string color = kColors[i % std::size(kColors)], data = fmt::format("data-run=\"{}\"", escape(r.name));
        auto lossY = [&](double v) { return loss.py(v / lossHi); };
        curve(loss, r.steps, r.trainLoss, lossY, color, 1, "class=\"train-loss\" " + data);
        curve(loss, r.steps, r.valLoss, lossY, color, 2, "class=\"val-loss\" " + data);
        for (auto [x, y] : curve(acc, r.steps, r.valAccuracy, [&](double v) { return acc.py(v); }, color, 2,
                                 "class=\"val-accuracy\" " + data))
            marker(fig, i, x, y, color, "");
        // The legend in the loss panel's top right corner, which a falling loss leaves empty.
        const double ly = loss.top + 14 + 16 * double(i);
        marker(fig, i, loss.right - 190, ly - 4, color, "");
        fig.text(loss.right - 180, ly,
                 r.testAccuracy >= 0 ? fmt::format("{} (test {:.2f}%)", r.name, 100 * r.testAccuracy) : r.name,
                 Anchor::Start, 11);
    }
    fig.end();
    // Each run: its layers' mean |gradient| over the steps (log scale), and as a heat map,
    // on decades and colours every run shares.
    const Decades dec(means);
    for (size_t i = 0; i < runs.size(); ++i) {
        const RunLog& r = runs[i];
        const double y0 = kTrainPanelH * double(1 + i);
        const Frame flow(24, y0, kTrainPanelW - 24, kTrainPanelH), heat(kTrainPanelW + 24, y0, kTrainPanelW - 84, kTrainPanelH);
        fig.begin(fmt::format("class=\"flow-over-training\" data-run=\"{}\"", escape(r.name)));
        decadeAxis(fig, flow, dec);
        flow.draw(fig, fmt::format("Gradient flow over training: {}", r.name), "step", "mean |gradient|");
        stepAxis(fig, flow, lastStep);
        const size_t layers = r.layers.size();
        for (size_t l = 0; l < layers; ++l) {
            const std::string color = viridis(layers > 1 ? 0.9 * double(l) / double(layers - 1) : 0);
            curve(flow, r.gradSteps, r.meanAbs[l], [&](double v) { return flow.py(dec.share(v)); }, color, 1.5,
                  fmt::format("class=\"layer-line\" data-layer=\"{}\"", escape(r.layers[l])));
            // The legend: every layer of a shallow net; the first and last of a deep one.
            if (layers <= 8 || l == 0 || l + 1 == layers) {
                const double ly = flow.top + 10 + 13 * double(layers <= 8 ? l : l == 0 ? 0 : 1);
                fig.line(flow.right - 120, ly - 3, flow.right - 104, ly - 3, color, 2);
                fig.text(flow.right - 100, ly, r.layers[l], Anchor::Start, 9);
            }
        }
        fig.end();
        // The heat map: a row per layer (input at the top), a column per logged point.
        fig.begin(fmt::format("class=\"heat-map\" data-run=\"{}\"", escape(r.name)));
        heat.draw(fig, fmt::format("log10 mean |gradient|: {}", r.name), "logged point", "layer");
        const double cw = (heat.right - heat.left) / double(std::max<size_t>(1, r.gradSteps.size())),
                     ch = (heat.bottom - heat.top) / double(std::max<size_t>(1, layers));
        for (size_t l = 0; l < layers; ++l)
            for (size_t k = 0; k < r.gradSteps.size(); ++k) {
                const double v = r.meanAbs[l][k];
                fig.rect(heat.left + cw * double(k), heat.top + ch * double(l), cw, ch,
                         std::isfinite(v) && v > 0 ? viridis(dec.share(v)) : "#ffffff");
            }
        for (size_t l = 0; l < layers; l += std::max<size_t>(1, (layers + 7) / 8))
            fig.text(heat.left - 5, heat.top + ch * (double(l) + 0.5) + 3, std::to_string(l + 1), Anchor::End, 9);
        // The colour bar, its decades labelled.
        const double bx = heat.right + 16, bw = 12;
        for (int k = 0; k < 50; ++k)
            fig.rect(bx, heat.bottom - (heat.bottom - heat.top) * (k + 1) / 50.0, bw, (heat.bottom - heat.top) / 50.0 + 0.5,
                     viridis((k + 0.5) / 50));
        for (int d = dec.d0; d <= dec.d1; d += dec.stride)
            fig.text(bx + bw + 3, heat.py(dec.share(std::pow(10.0, d))) + 3,
                     fmt::format("1e{}", d), Anchor::Start, 9);
        fig.end();
    }
    return fig;
}

} // namespace gradc
