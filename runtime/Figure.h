// Figure.h — a figure drawn once, as a list of shapes and texts in pixels, and written as SVG,
// PDF or PNG. SVG is written by hand, its groups carrying the classes and data attributes that
// tests and scripts read; PDF and PNG are the same calls drawn by cairo.
#pragma once

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace gradc {

enum class FigureFormat { Svg, Pdf, Png };

/// The format a figure file's name asks for by its extension (.svg, .pdf or .png, in any case;
/// SVG for a name without one, such as /dev/stdout); a UserError naming the file and the
/// formats for any other, so that a command refuses it before any work.
FigureFormat figureFormat(const std::string& path);

class Figure {
public:
    enum class Anchor { Start, Middle, End };
    using Points = std::vector<std::pair<double, double>>;

    Figure(double width, double height);
    double width() const { return width_; }
    double height() const { return height_; }

    /// Colours are "#rgb", "#rrggbb", "black", "white" or "none"; an empty stroke is none.
    void rect(double x, double y, double w, double h, const std::string& fill, const std::string& stroke = "",
              double strokeWidth = 1, double fillOpacity = 1);
    void line(double x1, double y1, double x2, double y2, const std::string& color, double width = 1);
    /// `attributes` (a class, data-*) go into the SVG element as they are, before the others.
    void polyline(const Points& points, const std::string& color, double width, const std::string& attributes = "");
    void circle(double cx, double cy, double r, const std::string& fill, const std::string& attributes = "");
    /// A filled polygon (a marker: a square, a triangle, a diamond).
    void polygon(const Points& points, const std::string& fill, const std::string& attributes = "");
    /// Text with its baseline at y, anchored at x; turned by `rotate` degrees (clockwise) about
    /// (x, y).
    void text(double x, double y, const std::string& s, Anchor anchor = Anchor::Middle, double size = 11,
              const std::string& color = "black", double rotate = 0);
    /// A group: `attributes` (class="panel" data-tensor="...") in SVG; nothing in PDF and PNG.
    void begin(const std::string& attributes);
    void end();

    std::string svg() const;
    std::string pdf() const;
    /// At two pixels per unit, so the text stays sharp at a printed column's width.
    std::string png() const;
    /// The bytes of the file `path` in the format its extension names (figureFormat); a
    /// UserError naming it for a figure too large for that format.
    std::string write(const std::string& path) const;

private:
    enum class Kind { Rect, Line, Polyline, Circle, Polygon, Text, Begin, End };
    struct Item {
        Kind kind = Kind::End;
        double a = 0, b = 0, c = 0, d = 0; ///< x, y, w, h; x1, y1, x2, y2; cx, cy, r; x, y, size, rotate
        std::string fill, stroke, text, attributes;
        double strokeWidth = 1, opacity = 1;
        Anchor anchor = Anchor::Middle;
        Points points;
    };
    /// An item of `kind` with its first numbers (a, b, c, d in order) set.
    static Item item(Kind kind, std::initializer_list<double> numbers = {});
    void draw(void* cairo) const;
    double width_, height_;
    std::vector<Item> items_;
};

} // namespace gradc
