namespace CopaKernels.Tests.Kernels;

/// <summary>Seeded tensors with the shapes of trouble: ties, zeros, signed zeros, denormals, wide exponents.</summary>
internal static class TestData
{
    public static readonly string[] Kinds = ["gaussian", "uniform", "ties", "equal", "zeros", "signed-zeros", "denormals", "wide", "lora-b"];

    public static float[] Make(string kind, int n, int seed)
    {
        var rng = new Random(seed * 7919 + n);
        var x = new float[n];
        for (int i = 0; i < n; i++)
        {
            x[i] = kind switch
            {
                "gaussian" => (float)Gaussian(rng),
                "uniform" => (float)(rng.NextDouble() * 2 - 1) / 64f,
                "ties" => new[] { 0f, 0.5f, -0.5f, 1f, -1f, 2f, -2f }[rng.Next(7)],
                "equal" => -0.25f,
                "zeros" => 0f,
                "signed-zeros" => rng.Next(3) switch { 0 => 0f, 1 => -0f, _ => (float)Gaussian(rng) * 1e-3f },
                "denormals" => BitConverter.UInt32BitsToSingle((uint)rng.Next(0, 64) | (rng.Next(2) == 0 ? 0x8000_0000u : 0)),
                "wide" => (float)(Gaussian(rng) * Math.Pow(2, rng.Next(-140, 120))),
                // Mostly zero rows (a freshly initialised LoRA B) with a few trained ones.
                "lora-b" => rng.Next(10) == 0 ? (float)Gaussian(rng) * 0.01f : 0f,
                _ => throw new ArgumentException(kind),
            };
        }
        return x;
    }

    public static double Gaussian(Random rng) =>
        Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());

    public static string Bits(float f) => $"0x{BitConverter.SingleToUInt32Bits(f):X8} ({f:G9})";
}
