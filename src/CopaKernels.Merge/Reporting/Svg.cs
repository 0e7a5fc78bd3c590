using System.Globalization;
using System.Net;
using System.Text;

namespace CopaKernels.Merge.Reporting;

/// <summary>
/// The report charts as inline SVG, written by hand: heatmaps, line charts (linear or log y) and horizontal
/// bars. Every number is formatted with the invariant culture and a few significant digits, so a page is
/// small (a 32-layer, 7-target, 8-task report stays well under 2 MB) and the same data gives the same bytes.
/// Each mark carries a <c>&lt;title&gt;</c> with its exact value, which a browser shows on hover.
/// </summary>
internal static class Svg
{
    /// <summary>Categorical colours (tasks, series), colour-blind safe (Okabe–Ito, then two greys).</summary>
    public static readonly string[] Palette = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000", "#999999", "#666666"];

    public static string Color(int i) => Palette[i % Palette.Length];

    public static string N(double v) => double.IsFinite(v) ? Math.Round(v, 2).ToString("0.##", CultureInfo.InvariantCulture) : "0";

    /// <summary>A value for people: 4 significant digits, invariant.</summary>
    public static string G(double v) => v.ToString("G4", CultureInfo.InvariantCulture);

    public static string Esc(string s) => WebUtility.HtmlEncode(s);

    /// <summary>Viridis, sampled: t in [0, 1] → colour (one of 256 precomputed).</summary>
    public static string Ramp(double t) => double.IsFinite(t) ? RampColors[(int)Math.Round(Math.Clamp(t, 0, 1) * 255)] : "#dddddd";

    private static readonly string[] RampColors = MakeRamp();

    private static string[] MakeRamp()
    {
        ReadOnlySpan<(double R, double G, double B)> stops =
        [
            (68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
            (31, 158, 137), (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37),
        ];
        var colors = new string[256];
        for (int c = 0; c < 256; c++)
        {
            double t = c / 255.0 * (stops.Length - 1);
            int i = Math.Min((int)t, stops.Length - 2);
            double f = t - i;
            var (a, b) = (stops[i], stops[i + 1]);
            colors[c] = "#" + ((int)Math.Round(a.R + f * (b.R - a.R))).ToString("x2", CultureInfo.InvariantCulture)
                + ((int)Math.Round(a.G + f * (b.G - a.G))).ToString("x2", CultureInfo.InvariantCulture)
                + ((int)Math.Round(a.B + f * (b.B - a.B))).ToString("x2", CultureInfo.InvariantCulture);
        }
        return colors;
    }

    /// <summary>
    /// A heatmap: <paramref name="rows"/> × <paramref name="cols"/> cells, NaN for none. The colour scale is
    /// linear over [lo, hi], or logarithmic when <paramref name="log"/> (for thresholds, which span decades).
    /// </summary>
    public static string Heatmap(string title, IReadOnlyList<string> rows, IReadOnlyList<string> cols, double[,] values,
        Func<double, string> format, bool log = false, double? fixedLo = null, double? fixedHi = null)
    {
        const int cell = 14, left = 70, top = 62, legend = 70;
        int width = left + Math.Max(cols.Count * cell, 120) + legend + 10;
        int height = top + rows.Count * cell + 46;
        double lo = double.PositiveInfinity, hi = double.NegativeInfinity;
        foreach (var v in values)
            if (double.IsFinite(v) && (!log || v > 0)) { lo = Math.Min(lo, v); hi = Math.Max(hi, v); }
        if (fixedLo is { } fl) lo = fl;
        if (fixedHi is { } fh) hi = fh;
        if (!double.IsFinite(lo)) (lo, hi) = (0, 1);
        double Map(double v)
        {
            if (!double.IsFinite(v) || (log && v <= 0)) return double.NaN;
            if (hi <= lo) return 0.5;
            return log ? (Math.Log10(v) - Math.Log10(lo)) / (Math.Log10(hi) - Math.Log10(lo)) : (v - lo) / (hi - lo);
        }
        var sb = new StringBuilder();
        sb.Append($"<svg class=\"chart\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\"><title>{Esc(title)}</title>");
        sb.Append($"<text x=\"0\" y=\"14\" class=\"t\">{Esc(title)}</text>");
        for (int c = 0; c < cols.Count; c++)
            sb.Append($"<text x=\"{left + c * cell + cell / 2}\" y=\"{top - 4}\" class=\"s\" transform=\"rotate(-45 {left + c * cell + cell / 2} {top - 4})\">{Esc(Short(cols[c], 8))}</text>");
        int labelEvery = Math.Max(1, rows.Count / 16);
        var colLabels = cols.Select(Esc).ToArray();
        for (int r = 0; r < rows.Count; r++)
        {
            string rowLabel = Esc(rows[r]);
            if (r % labelEvery == 0 || r == rows.Count - 1)
                sb.Append($"<text x=\"{left - 4}\" y=\"{top + r * cell + cell - 3}\" class=\"s\" text-anchor=\"end\">{rowLabel}</text>");
            for (int c = 0; c < cols.Count; c++)
            {
                double v = values[r, c];
                if (double.IsNaN(v)) continue;
                sb.Append($"<rect x=\"{left + c * cell}\" y=\"{top + r * cell}\" width=\"{cell - 1}\" height=\"{cell - 1}\" fill=\"{Ramp(Map(v))}\"><title>{rowLabel} {colLabels[c]}: {format(v)}</title></rect>");
            }
        }
        // Legend: the ramp with its ends.
        int lx = left + Math.Max(cols.Count * cell, 120) + 14, ly = top, lh = Math.Max(60, rows.Count * cell);
        for (int i = 0; i < 20; i++)
            sb.Append($"<rect x=\"{lx}\" y=\"{N(ly + lh - (i + 1) * lh / 20.0)}\" width=\"12\" height=\"{N(lh / 20.0 + 0.5)}\" fill=\"{Ramp((i + 0.5) / 20)}\"/>");
        sb.Append($"<text x=\"{lx + 16}\" y=\"{ly + 8}\" class=\"s\">{Esc(format(hi))}</text>");
        sb.Append($"<text x=\"{lx + 16}\" y=\"{ly + lh}\" class=\"s\">{Esc(format(lo))}</text>");
        if (log) sb.Append($"<text x=\"{lx}\" y=\"{ly + lh + 14}\" class=\"s\">log scale</text>");
        sb.Append("</svg>");
        return sb.ToString();
    }

    /// <summary>A series of a line chart: its name, colour, width and points.</summary>
    public sealed record Series(string Name, string Color, IReadOnlyList<(double X, double Y)> Points, double Width = 1.5);

    /// <summary>A line chart with axes, ticks and a legend; y is logarithmic when <paramref name="logY"/> (non-positive points are left out).</summary>
    public static string Lines(string title, string xLabel, string yLabel, IReadOnlyList<Series> series, bool logY = false,
        int width = 420, int height = 240, Func<double, string>? yFormat = null, bool legend = true)
    {
        yFormat ??= G;
        const int left = 58, right = 10, top = 24, bottom = 38;
        int plotW = width - left - right, plotH = height - top - bottom;
        // The drawn range (plain loops: this runs once per process, where LINQ over tuples would be compiled first).
        double x0 = double.PositiveInfinity, x1 = double.NegativeInfinity, y0 = double.PositiveInfinity, y1 = double.NegativeInfinity;
        bool whole = true;
        foreach (var s in series)
            foreach (var p in s.Points)
            {
                if (!(double.IsFinite(p.X) && double.IsFinite(p.Y) && (!logY || p.Y > 0))) continue;
                (x0, x1, y0, y1) = (Math.Min(x0, p.X), Math.Max(x1, p.X), Math.Min(y0, p.Y), Math.Max(y1, p.Y));
                whole &= p.X == Math.Round(p.X);
            }
        // No point to draw (every σ zero on a log axis, say): an empty frame over a unit range.
        if (double.IsInfinity(x0)) (x0, x1, y0, y1) = (0, 1, logY ? 0.1 : 0, 1);
        if (!logY) y0 = Math.Min(0, y0);
        if (x1 <= x0) x1 = x0 + 1;
        if (logY)
        {
            y0 = Math.Pow(10, Math.Floor(Math.Log10(y0)));
            y1 = Math.Pow(10, Math.Ceiling(Math.Log10(y1)));
            if (y1 <= y0) y1 = y0 * 10;
        }
        else if (y1 <= y0) y1 = y0 + 1;
        double X(double x) => left + (x - x0) / (x1 - x0) * plotW;
        double Y(double y) => logY ? top + plotH - (Math.Log10(y) - Math.Log10(y0)) / (Math.Log10(y1) - Math.Log10(y0)) * plotH
            : top + plotH - (y - y0) / (y1 - y0) * plotH;
        var sb = new StringBuilder();
        sb.Append($"<svg class=\"chart\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\"><title>{Esc(title)}</title>");
        sb.Append($"<text x=\"0\" y=\"14\" class=\"t\">{Esc(title)}</text>");
        sb.Append($"<rect x=\"{left}\" y=\"{top}\" width=\"{plotW}\" height=\"{plotH}\" class=\"frame\"/>");
        // y ticks: decades on a log axis, 5 even steps otherwise.
        var yTicks = new List<double>();
        if (logY) for (double d = y0; d <= y1 * 1.0001 && yTicks.Count < 400; d *= 10) yTicks.Add(d);
        else for (int i = 0; i <= 4; i++) yTicks.Add(y0 + (y1 - y0) * i / 4);
        int skip = Math.Max(1, yTicks.Count / 6);
        for (int i = 0; i < yTicks.Count; i += skip)
        {
            double y = Y(yTicks[i]);
            sb.Append($"<line x1=\"{left}\" x2=\"{left + plotW}\" y1=\"{N(y)}\" y2=\"{N(y)}\" class=\"grid\"/><text x=\"{left - 4}\" y=\"{N(y + 3)}\" class=\"s\" text-anchor=\"end\">{Esc(yFormat(yTicks[i]))}</text>");
        }
        // x ticks: 5 even steps, whole numbers when the axis spans whole numbers (indices, counts).
        whole &= x1 - x0 >= 4;
        for (int i = 0; i <= 4; i++)
        {
            double x = x0 + (x1 - x0) * i / 4;
            if (whole) x = Math.Round(x);
            sb.Append($"<text x=\"{N(X(x))}\" y=\"{top + plotH + 13}\" class=\"s\" text-anchor=\"middle\">{Esc(G(x))}</text>");
        }
        sb.Append($"<text x=\"{left + plotW / 2}\" y=\"{height - 4}\" class=\"s\" text-anchor=\"middle\">{Esc(xLabel)}</text>");
        sb.Append($"<text x=\"10\" y=\"{top + plotH / 2}\" class=\"s\" text-anchor=\"middle\" transform=\"rotate(-90 10 {top + plotH / 2})\">{Esc(yLabel)}</text>");
        foreach (var s in series)
        {
            int drawn = 0;
            (double X, double Y) last = default;
            foreach (var q in s.Points)
            {
                if (!(double.IsFinite(q.X) && double.IsFinite(q.Y) && (!logY || q.Y > 0))) continue;
                if (drawn++ == 0) sb.Append($"<polyline fill=\"none\" stroke=\"{s.Color}\" stroke-width=\"{N(s.Width)}\" points=\"");
                sb.Append(N(X(q.X))).Append(',').Append(N(Y(q.Y))).Append(' ');
                last = q;
            }
            if (drawn == 0) continue;
            sb.Append($"\"><title>{Esc(s.Name)}</title></polyline>");
            if (drawn == 1) sb.Append($"<circle cx=\"{N(X(last.X))}\" cy=\"{N(Y(last.Y))}\" r=\"2.5\" fill=\"{s.Color}\"/>");
        }
        if (legend)
        {
            int ly = top + 6;
            foreach (var s in series.Take(10))
            {
                sb.Append($"<line x1=\"{left + plotW - 96}\" x2=\"{left + plotW - 82}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{s.Color}\" stroke-width=\"{N(Math.Max(2, s.Width))}\"/><text x=\"{left + plotW - 78}\" y=\"{ly + 3}\" class=\"s\">{Esc(Short(s.Name, 14))}</text>");
                ly += 11;
            }
        }
        sb.Append("</svg>");
        return sb.ToString();
    }

    /// <summary>One bar of <see cref="Bars"/>: a label, its value, the text shown beside it, and its colour.</summary>
    public sealed record Bar(string Label, double Value, string Text, string Color = "#0072b2");

    /// <summary>
    /// Horizontal bars on one scale: linear from 0, or logarithmic when <paramref name="log"/> (for times that
    /// span decades: a bar's length then grows with log10 of its value, from a tenth of the smallest).
    /// </summary>
    public static string Bars(string title, IReadOnlyList<Bar> bars, int width = 520, bool log = false)
    {
        const int row = 18, top = 24;
        int left = Math.Max(90, 6 * (bars.Count == 0 ? 0 : bars.Max(b => b.Label.Length)) + 8);
        int height = top + bars.Count * row + 8;
        double max = double.NegativeInfinity, min = double.PositiveInfinity;
        foreach (var b in bars)
            if (double.IsFinite(b.Value) && b.Value > 0) (max, min) = (Math.Max(max, b.Value), Math.Min(min, b.Value));
        if (double.IsInfinity(max)) (max, min) = (1, 10);
        min /= 10;
        int plotW = Math.Max(60, width - left - 130);
        double Length(double v) => !(double.IsFinite(v) && v > 0) ? 0
            : log ? (max <= min ? plotW : (Math.Log10(v) - Math.Log10(min)) / (Math.Log10(max) - Math.Log10(min)) * plotW)
            : v / max * plotW;
        var sb = new StringBuilder();
        sb.Append($"<svg class=\"chart\" width=\"{left + plotW + 130}\" height=\"{height}\" viewBox=\"0 0 {left + plotW + 130} {height}\" role=\"img\"><title>{Esc(title)}</title>");
        sb.Append($"<text x=\"0\" y=\"14\" class=\"t\">{Esc(title)}{(log ? " (log scale)" : "")}</text>");
        for (int i = 0; i < bars.Count; i++)
        {
            var b = bars[i];
            double w = Length(b.Value);
            int y = top + i * row;
            sb.Append($"<text x=\"{left - 6}\" y=\"{y + 12}\" class=\"s\" text-anchor=\"end\">{Esc(b.Label)}</text>");
            sb.Append($"<rect x=\"{left}\" y=\"{y + 2}\" width=\"{N(Math.Max(w, 0.5))}\" height=\"{row - 5}\" fill=\"{b.Color}\"><title>{Esc(b.Label)}: {Esc(b.Text)}</title></rect>");
            sb.Append($"<text x=\"{N(left + w + 4)}\" y=\"{y + 12}\" class=\"s\">{Esc(b.Text)}</text>");
        }
        sb.Append("</svg>");
        return sb.ToString();
    }

    public static string Short(string s, int max) => s.Length <= max ? s : s[..(max - 1)] + "…";
}
