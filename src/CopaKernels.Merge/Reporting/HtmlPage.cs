using System.Text;

namespace CopaKernels.Merge.Reporting;

/// <summary>
/// One self-contained HTML page: inline CSS and SVG only, no script, and a Content-Security-Policy that
/// forbids every fetch (<c>default-src 'none'</c>), so a report opened from disk never reaches the network.
/// Laid out to print: landscape at 85 % (a task's four heatmaps side by side, as on screen), headings kept
/// with what follows them, charts not split across pages, and the colours as they show.
/// </summary>
internal sealed class HtmlPage
{
    private readonly StringBuilder _body = new();
    private readonly string _title;

    public HtmlPage(string title) => _title = title;

    public HtmlPage H2(string text) { _body.Append("<h2>").Append(Svg.Esc(text)).Append("</h2>\n"); return this; }

    public HtmlPage H3(string text) { _body.Append("<h3>").Append(Svg.Esc(text)).Append("</h3>\n"); return this; }

    public HtmlPage P(string text) { _body.Append("<p>").Append(Svg.Esc(text)).Append("</p>\n"); return this; }

    /// <summary>Raw markup (charts).</summary>
    public HtmlPage Raw(string html) { _body.Append(html).Append('\n'); return this; }

    /// <summary>A row of charts that wraps.</summary>
    public HtmlPage Charts(IEnumerable<string> svgs)
    {
        _body.Append("<div class=\"row\">");
        foreach (var s in svgs) _body.Append("<div class=\"cell\">").Append(s).Append("</div>");
        _body.Append("</div>\n");
        return this;
    }

    /// <summary>A two-column table of names and values.</summary>
    public HtmlPage Table(IEnumerable<(string Name, string Value)> rows)
    {
        _body.Append("<table>");
        foreach (var (n, v) in rows) _body.Append("<tr><th>").Append(Svg.Esc(n)).Append("</th><td>").Append(Svg.Esc(v)).Append("</td></tr>");
        _body.Append("</table>\n");
        return this;
    }

    /// <summary>A table with a header row.</summary>
    public HtmlPage Grid(IReadOnlyList<string> header, IEnumerable<IReadOnlyList<string>> rows)
    {
        _body.Append("<table class=\"grid\"><tr>");
        foreach (var h in header) _body.Append("<th>").Append(Svg.Esc(h)).Append("</th>");
        _body.Append("</tr>");
        foreach (var r in rows)
        {
            _body.Append("<tr>");
            foreach (var c in r) _body.Append("<td>").Append(Svg.Esc(c)).Append("</td>");
            _body.Append("</tr>");
        }
        _body.Append("</table>\n");
        return this;
    }

    public override string ToString()
    {
        using var w = new StringWriter(System.Globalization.CultureInfo.InvariantCulture);
        WriteTo(w);
        return w.ToString();
    }

    /// <summary>Writes the page without first building it as one string (a report page is about a megabyte).</summary>
    public void WriteTo(TextWriter w)
    {
        w.Write("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
        w.Write("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n");
        w.Write("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        w.Write("<title>" + Svg.Esc(_title) + "</title>\n<style>\n" + Css + "</style></head>\n<body>\n<h1>" + Svg.Esc(_title) + "</h1>\n");
        foreach (var chunk in _body.GetChunks()) w.Write(chunk.Span);
        w.Write("</body></html>\n");
    }

    private const string Css = """
        body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #111; background: #fff; margin: 24px; max-width: 1280px; }
        h1 { font-size: 20px; margin: 0 0 12px; } h2 { font-size: 16px; margin: 24px 0 8px; border-bottom: 1px solid #ccc; } h3 { font-size: 14px; margin: 14px 0 6px; }
        table { border-collapse: collapse; margin: 4px 0 12px; } th, td { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; } th { font-weight: 600; color: #333; }
        table.grid th, table.grid td { border-bottom: 1px solid #e4e4e4; padding: 2px 8px; } table.grid td { font-variant-numeric: tabular-nums; }
        .row { display: flex; flex-wrap: wrap; gap: 12px 20px; } .cell { break-inside: avoid; }
        svg.chart { display: block; overflow: visible; } svg .t { font-size: 12px; font-weight: 600; } svg .s { font-size: 10px; fill: #333; }
        svg .frame { fill: none; stroke: #999; } svg .grid { stroke: #e4e4e4; }
        p.note { color: #555; }
        @page { size: landscape; margin: 8mm; }
        @media print { body { margin: 0; max-width: none; zoom: 0.85; } h2, h3, h2 + p { break-after: avoid; } .cell, table { break-inside: avoid; } * { -webkit-print-color-adjust: exact; print-color-adjust: exact; } }

        """;
}
