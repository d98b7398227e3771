// Figure.cpp — the figure's items as SVG text (by hand) and through cairo as PDF and PNG.
#include "Figure.h"

#include "Source.h"
#include "Text.h"

#include <cairo-pdf.h>
#include <cairo.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>

namespace gradc {
namespace {

UserError figureError(const std::string& path, const std::string& message) {
    return UserError({makeSourceFile(path, ""), 0, 0}, message);
}

struct Rgb {
    double r = 0, g = 0, b = 0;
    bool none = false;
};

/// "#rgb", "#rrggbb", "black", "white" or "none" (the colours the figures use).
Rgb rgb(const std::string& c) {
    if (c.empty() || c == "none") return {0, 0, 0, true};
    if (c == "black") return {0, 0, 0};
    if (c == "white") return {1, 1, 1};
    auto hex = [&](size_t at, size_t digits) {
        const int v = std::stoi(c.substr(at, digits), nullptr, 16);
        return digits == 1 ? v * 17 / 255.0 : v / 255.0;
    };
    internal_assert(c[0] == '#' && (c.size() == 4 || c.size() == 7), "a figure colour that is not #rgb or #rrggbb: " + c);
    const size_t d = c.size() == 4 ? 1 : 2;
    return {hex(1, d), hex(1 + d, d), hex(1 + 2 * d, d)};
}

const char* anchorName(Figure::Anchor a) {
    switch (a) {
    case Figure::Anchor::Start: return "start";
    case Figure::Anchor::End: return "end";
    case Figure::Anchor::Middle: break;
    }
    return "middle";
}

cairo_status_t append(void* closure, const unsigned char* data, unsigned int length) {
    static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
    return CAIRO_STATUS_SUCCESS;
}

/// The pixels on a side cairo's image surfaces allow.
constexpr double kMaxPngSide = 32767;
constexpr double kPngScale = 2;
/// The points on a side PDF viewers allow (200 inches, Adobe's limit for PDF 1.x): a taller
/// figure (a net of hundreds of layers) is drawn scaled down to fit, as vectors it stays sharp.
constexpr double kMaxPdfSide = 14400;

} // namespace

FigureFormat figureFormat(const std::string& path) {
    const size_t dot = path.rfind('.');
    const size_t slash = path.rfind('/');
    std::string ext = dot == std::string::npos || (slash != std::string::npos && dot < slash) ? "" : path.substr(dot + 1);
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
    if (ext == "svg" || ext.empty()) return FigureFormat::Svg; // without one: /dev/stdout
    if (ext == "pdf") return FigureFormat::Pdf;
    if (ext == "png") return FigureFormat::Png;
    throw figureError(path, fmt::format("cannot draw a figure as '.{}': the formats are .svg, .pdf and .png", ext));
}

Figure::Figure(double width, double height) : width_(width), height_(height) {}

Figure::Item Figure::item(Kind kind, std::initializer_list<double> numbers) {
    Item it;
    it.kind = kind;
    double* slots[] = {&it.a, &it.b, &it.c, &it.d};
    size_t i = 0;
    for (double v : numbers) *slots[i++] = v;
    return it;
}

void Figure::rect(double x, double y, double w, double h, const std::string& fill, const std::string& stroke,
                  double strokeWidth, double fillOpacity) {
    Item it = item(Kind::Rect, {x, y, w, h});
    it.fill = fill, it.stroke = stroke, it.strokeWidth = strokeWidth, it.opacity = fillOpacity;
    items_.push_back(std::move(it));
}

void Figure::line(double x1, double y1, double x2, double y2, const std::string& color, double width) {
    Item it = item(Kind::Line, {x1, y1, x2, y2});
    it.stroke = color, it.strokeWidth = width;
    items_.push_back(std::move(it));
}

void Figure::polyline(const Points& points, const std::string& color, double width, const std::string& attributes) {
    Item it = item(Kind::Polyline);
    it.points = points, it.stroke = color, it.strokeWidth = width, it.attributes = attributes;
    items_.push_back(std::move(it));
}

void Figure::circle(double cx, double cy, double r, const std::string& fill, const std::string& attributes) {
    Item it = item(Kind::Circle, {cx, cy, r});
    it.fill = fill, it.attributes = attributes;
    items_.push_back(std::move(it));
}

void Figure::polygon(const Points& points, const std::string& fill, const std::string& attributes) {
    Item it = item(Kind::Polygon);
    it.points = points, it.fill = fill, it.attributes = attributes;
    items_.push_back(std::move(it));
}

void Figure::text(double x, double y, const std::string& s, Anchor anchor, double size, const std::string& color,
                  double rotate) {
    Item it = item(Kind::Text, {x, y, size, rotate});
    it.text = s, it.anchor = anchor, it.fill = color;
    items_.push_back(std::move(it));
}

void Figure::begin(const std::string& attributes) {
    Item it = item(Kind::Begin);
    it.attributes = attributes;
    items_.push_back(std::move(it));
}

void Figure::end() { items_.push_back(item(Kind::End)); }

std::string Figure::svg() const {
    std::string s = fmt::format("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" "
                                "viewBox=\"0 0 {:.0f} {:.0f}\" font-family=\"sans-serif\" font-size=\"11\">\n"
                                "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
                                width_, height_, width_, height_);
    auto lead = [](const std::string& attributes) { return attributes.empty() ? "" : attributes + " "; };
    for (const Item& it : items_) {
        switch (it.kind) {
        case Kind::Rect:
            s += fmt::format("<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"", it.a,
                             it.b, it.c, it.d, it.fill.empty() ? "none" : it.fill);
            if (it.opacity != 1) s += fmt::format(" fill-opacity=\"{:g}\"", it.opacity);
            if (!it.stroke.empty()) s += fmt::format(" stroke=\"{}\" stroke-width=\"{:g}\"", it.stroke, it.strokeWidth);
            s += "/>\n";
            break;
        case Kind::Line:
            s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
                             "stroke-width=\"{:g}\"/>\n",
                             it.a, it.b, it.c, it.d, it.stroke, it.strokeWidth);
            break;
        case Kind::Polyline: {
            std::string pts;
            for (auto [x, y] : it.points) pts += fmt::format("{:.2f},{:.2f} ", x, y);
            s += fmt::format("<polyline {}fill=\"none\" stroke=\"{}\" stroke-width=\"{:g}\" points=\"{}\"/>\n",
                             lead(it.attributes), it.stroke, it.strokeWidth, pts);
            break;
        }
        case Kind::Circle:
            s += fmt::format("<circle {}cx=\"{:.2f}\" cy=\"{:.2f}\" r=\"{:g}\" fill=\"{}\"/>\n", lead(it.attributes),
                             it.a, it.b, it.c, it.fill);
            break;
        case Kind::Polygon: {
            std::string pts;
            for (auto [x, y] : it.points) pts += fmt::format("{:.2f},{:.2f} ", x, y);
            s += fmt::format("<polygon {}fill=\"{}\" points=\"{}\"/>\n", lead(it.attributes), it.fill, pts);
            break;
        }
        case Kind::Text:
            s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\" font-size=\"{:g}\" fill=\"{}\"{}>{}"
                             "</text>\n",
                             it.a, it.b, anchorName(it.anchor), it.c, it.fill,
                             it.d == 0 ? "" : fmt::format(" transform=\"rotate({:g} {:.1f} {:.1f})\"", it.d, it.a, it.b),
                             xmlText(it.text));
            break;
        case Kind::Begin: s += "<g " + it.attributes + ">\n"; break;
        case Kind::End: s += "</g>\n"; break;
        }
    }
    return s + "</svg>\n";
}

void Figure::draw(void* context) const {
    auto* cr = static_cast<cairo_t*>(context);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    auto source = [&](const Rgb& c, double alpha = 1) { cairo_set_source_rgba(cr, c.r, c.g, c.b, alpha); };
    auto stroke = [&](const std::string& color, double width) {
        const Rgb c = rgb(color);
        if (c.none) return cairo_new_path(cr);
        source(c), cairo_set_line_width(cr, width), cairo_stroke(cr);
    };
    for (const Item& it : items_) {
        switch (it.kind) {
        case Kind::Rect: {
            const Rgb fill = rgb(it.fill);
            cairo_rectangle(cr, it.a, it.b, it.c, it.d);
            if (!fill.none) source(fill, it.opacity), cairo_fill_preserve(cr);
            stroke(it.stroke, it.strokeWidth);
            break;
        }
        case Kind::Line:
            cairo_move_to(cr, it.a, it.b), cairo_line_to(cr, it.c, it.d);
            stroke(it.stroke, it.strokeWidth);
            break;
        case Kind::Polyline:
            for (size_t i = 0; i < it.points.size(); ++i)
                (i ? cairo_line_to : cairo_move_to)(cr, it.points[i].first, it.points[i].second);
            stroke(it.stroke, it.strokeWidth);
            break;
        case Kind::Polygon:
            for (size_t i = 0; i < it.points.size(); ++i)
                (i ? cairo_line_to : cairo_move_to)(cr, it.points[i].first, it.points[i].second);
            cairo_close_path(cr);
            source(rgb(it.fill)), cairo_fill(cr);
            break;
        case Kind::Circle:
            cairo_new_sub_path(cr);
            cairo_arc(cr, it.a, it.b, it.c, 0, 2 * M_PI);
            source(rgb(it.fill)), cairo_fill(cr);
            break;
        case Kind::Text: {
            cairo_save(cr);
            cairo_set_font_size(cr, it.c);
            cairo_text_extents_t ext;
            const std::string text = validUtf8(it.text); // cairo stops drawing at bytes that are not UTF-8
            cairo_text_extents(cr, text.c_str(), &ext);
            const double shift = it.anchor == Anchor::Start ? 0 : it.anchor == Anchor::End ? ext.x_advance
                                                                                            : ext.x_advance / 2;
            cairo_translate(cr, it.a, it.b);
            cairo_rotate(cr, it.d * M_PI / 180);
            cairo_move_to(cr, -shift, 0);
            source(rgb(it.fill));
            cairo_show_text(cr, text.c_str());
            cairo_restore(cr);
            break;
        }
        case Kind::Begin:
        case Kind::End: break;
        }
    }
}

std::string Figure::pdf() const {
    std::string out;
    const double scale = std::min(1.0, kMaxPdfSide / std::max(width_, height_));
    cairo_surface_t* surface = cairo_pdf_surface_create_for_stream(append, &out, width_ * scale, height_ * scale);
    cairo_t* cr = cairo_create(surface);
    cairo_scale(cr, scale, scale);
    draw(cr);
    cairo_status_t status = cairo_status(cr); // a drawing call that failed stops the rest
    cairo_destroy(cr);
    cairo_surface_finish(surface);
    if (status == CAIRO_STATUS_SUCCESS) status = cairo_surface_status(surface);
    cairo_surface_destroy(surface);
    internal_assert(status == CAIRO_STATUS_SUCCESS, std::string("cairo could not draw a PDF: ") +
                                                        cairo_status_to_string(status));
    return out;
}

std::string Figure::png() const {
    const int w = int(std::ceil(width_ * kPngScale)), h = int(std::ceil(height_ * kPngScale));
    cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h);
    cairo_t* cr = cairo_create(surface);
    cairo_scale(cr, kPngScale, kPngScale);
    draw(cr);
    cairo_status_t status = cairo_status(cr); // a drawing call that failed stops the rest
    cairo_destroy(cr);
    std::string out;
    if (status == CAIRO_STATUS_SUCCESS) status = cairo_surface_status(surface);
    if (status == CAIRO_STATUS_SUCCESS) status = cairo_surface_write_to_png_stream(surface, append, &out);
    cairo_surface_destroy(surface);
    internal_assert(status == CAIRO_STATUS_SUCCESS, std::string("cairo could not draw a PNG: ") +
                                                        cairo_status_to_string(status));
    return out;
}

std::string Figure::write(const std::string& path) const {
    switch (figureFormat(path)) {
    case FigureFormat::Svg: return svg();
    case FigureFormat::Pdf: return pdf();
    case FigureFormat::Png:
        if (std::max(width_, height_) * kPngScale > kMaxPngSide)
            throw figureError(path, fmt::format("the figure is {:.0f} x {:.0f} pixels, too large for a PNG (at most "
                                                "{:.0f} on a side); draw it as .svg or .pdf",
                                                width_ * kPngScale, height_ * kPngScale, kMaxPngSide));
        return png();
    }
    return svg();
}

} // namespace gradc
