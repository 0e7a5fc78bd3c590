using System.Text;

namespace CopaKernels.Cli;

/// <summary>
/// A plain aligned text table for long listings (tens of thousands of tensors): Spectre's Table
/// measures every cell as markup, which took seconds at 20,000 rows; this writes each line once.
/// </summary>
internal sealed class TextTable(params (string Header, bool Right)[] columns)
{
    private readonly List<string[]> _rows = new();

    public void Add(params string[] cells) => _rows.Add(cells);

    public void Write(TextWriter w)
    {
        var widths = columns.Select(c => c.Header.Length).ToArray();
        foreach (var r in _rows)
            for (int i = 0; i < widths.Length; i++) widths[i] = Math.Max(widths[i], r[i].Length);
        var sb = new StringBuilder();
        void Line(IReadOnlyList<string> cells)
        {
            sb.Clear().Append("  ");
            for (int i = 0; i < widths.Length; i++)
            {
                if (i > 0) sb.Append("  ");
                sb.Append(columns[i].Right ? cells[i].PadLeft(widths[i]) : i == widths.Length - 1 ? cells[i] : cells[i].PadRight(widths[i]));
            }
            w.WriteLine(sb.ToString().TrimEnd());
        }
        Line(columns.Select(c => c.Header).ToArray());
        w.WriteLine("  " + new string('-', widths.Sum() + 2 * (widths.Length - 1)));
        foreach (var r in _rows) Line(r);
    }
}
