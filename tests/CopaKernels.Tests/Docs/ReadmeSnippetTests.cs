using System.Text.RegularExpressions;

namespace CopaKernels.Tests.Docs;

/// <summary>
/// Every C# snippet of the README and of the packages' readmes is an excerpt of a sample
/// (samples/*/Program.cs), which CI builds against the packed packages and runs (.ci/samples.sh): so every
/// snippet a reader copies compiles and does what its comments say. An excerpt is made of the snippet's
/// paragraphs (split at blank lines) in order, each one's lines adjacent in one sample, compared without
/// indentation; a snippet's <c>using</c> directives only need to be among the sample's.
/// </summary>
public partial class ReadmeSnippetTests
{
    private static readonly string Docs = Path.Combine(AppContext.BaseDirectory, "Docs");

    public static TheoryData<string> Readmes() => new(ReadmeFiles());

    private static List<string> ReadmeFiles() =>
        Directory.GetFiles(Docs, "README.md", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .Select(f => Path.GetRelativePath(Docs, f)).ToList();

    [Fact]
    public void TheReadmesAndSamplesAreThere()
    {
        var readmes = ReadmeFiles();
        Assert.Contains("README.md", readmes);
        Assert.Equal(5, readmes.Count(r => r.StartsWith("src", StringComparison.Ordinal)));   // the four libraries' and the tool's package readmes
        Assert.Equal(2, Samples().Count);
    }

    [Theory]
    [MemberData(nameof(Readmes))]
    public void EveryCSharpSnippet_IsAnExcerptOfASample(string readme)
    {
        var samples = Samples();
        var snippets = Snippets(File.ReadAllText(Path.Combine(Docs, readme))).ToList();
        if (readme == "README.md") Assert.True(snippets.Count >= 5, $"{readme}: {snippets.Count} C# snippets");
        foreach (var snippet in snippets)
        {
            var usings = snippet.SelectMany(p => p).Where(IsUsing).ToList();
            var body = snippet.Select(p => p.Where(l => !IsUsing(l)).ToList()).Where(p => p.Count > 0).ToList();
            bool found = samples.Any(s => usings.All(u => s.Contains(u)) && Contains(s, body));
            Assert.True(found, $"{readme}: this snippet is not an excerpt of samples/*/Program.cs:\n{string.Join("\n\n", snippet.Select(p => string.Join('\n', p)))}");
        }
    }

    [Fact]
    public void TheCheck_RefusesASnippetThatIsNotInTheSample()
    {
        var sample = Samples()[0];
        int at = sample.Count / 2;
        Assert.True(Contains(sample, [sample.GetRange(at, 3)]));
        Assert.True(Contains(sample, [[sample[at]], [sample[at + 2]]]));                 // two paragraphs, in order
        Assert.False(Contains(sample, [[sample[at + 2]], [sample[at]]]));                // out of order
        Assert.False(Contains(sample, [[sample[at], sample[at + 2], sample[at + 1]]]));  // not adjacent
        Assert.False(Contains(sample, [[sample[at], "var made = \"up\";"]]));
    }

    /// <summary>Each sample's lines, trimmed, without blank lines.</summary>
    private static List<List<string>> Samples() =>
        Directory.GetFiles(Path.Combine(Docs, "samples"), "Program.cs", SearchOption.AllDirectories)
            .Order(StringComparer.Ordinal).Select(f => Normalize(File.ReadAllLines(f))).ToList();

    /// <summary>Each C# block's paragraphs (split at blank lines), lines trimmed.</summary>
    private static IEnumerable<List<List<string>>> Snippets(string markdown) =>
        CSharpBlock().Matches(markdown).Select(m => Regex.Split(m.Groups[1].Value, @"\n\s*\n")
            .Select(p => Normalize(p.Split('\n'))).Where(p => p.Count > 0).ToList());

    private static List<string> Normalize(IEnumerable<string> lines) =>
        lines.Select(l => l.Trim()).Where(l => l.Length > 0).ToList();

    private static bool IsUsing(string line) => line.StartsWith("using ", StringComparison.Ordinal) && !line.StartsWith("using var ", StringComparison.Ordinal) && !line.Contains('(');

    /// <summary>Whether each paragraph is a run of adjacent lines of the sample, after the previous one's.</summary>
    private static bool Contains(List<string> sample, List<List<string>> paragraphs)
    {
        int from = 0;
        foreach (var p in paragraphs)
        {
            int at = -1;
            for (int i = from; i + p.Count <= sample.Count && at < 0; i++)
                if (sample.GetRange(i, p.Count).SequenceEqual(p)) at = i;
            if (at < 0) return false;
            from = at + p.Count;
        }
        return true;
    }

    [GeneratedRegex(@"^```csharp\n(.*?)^```", RegexOptions.Multiline | RegexOptions.Singleline)]
    private static partial Regex CSharpBlock();
}
