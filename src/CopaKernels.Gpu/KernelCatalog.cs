using System.Reflection;

namespace CopaKernels.Gpu;

/// <summary>One kernel entry point found by <see cref="KernelCatalog"/>.</summary>
/// <param name="Name">Stable, unique name: the declaring type's full name and the method name
/// (<c>Namespace.Type.Method</c>, nested types joined with '.'), plus the parameter types in
/// parentheses when the type has several kernels of that name.</param>
/// <param name="Method">The kernel method.</param>
/// <param name="Grouping">How the kernel is launched, from its <see cref="GpuKernelAttribute"/>.</param>
internal sealed record CatalogedKernel(string Name, MethodInfo Method, KernelGrouping Grouping)
{
    /// <inheritdoc/>
    public override string ToString() => Name;
}

/// <summary>
/// Every ILGPU kernel entry point of this library: the methods of the CopaKernels.Gpu assembly that
/// carry <see cref="GpuKernelAttribute"/>. CI compiles each of them to PTX and assembles it with
/// ptxas (<see cref="PtxCompiler"/>), so a kernel the CUDA driver would reject fails the build on a
/// machine without a GPU; the list is found by reflection so a new kernel cannot be forgotten.
/// </summary>
/// <remarks>
/// <para>Why the kernels reduce by hand and do not use ILGPU.Algorithms (group and warp reductions,
/// XMath). A result must not depend on the backend or on scheduling, and ILGPU.Algorithms' reductions
/// are implemented per backend and document no order of floating-point additions: they promise
/// neither the same bits on CUDA, OpenCL and the CPU emulator nor the same bits from one ILGPU version
/// to the next. So each kernel fixes its own order:</para>
/// <list type="bullet">
/// <item>The selection (<c>MagnitudeSelection</c>) counts integer keys (<c>MagnitudeKey</c>) into integer
/// histograms with atomics, exact in any order, and picks each digit by a fixed walk over the bins: the
/// threshold, kept count and mask are the CPU backend's, bit for bit, on every backend.</item>
/// <item>The row sums (<c>RowAbsSums</c>) add in fp32 in an order set by the row length and the group size
/// alone (a strided sum per thread, then a shared-memory tree that halves), never by scheduling, so a
/// result is reproducible on a device; it differs from the CPU backend's order only within fp32
/// rounding.</item>
/// <item>The bit-exact product (<c>LowRankProduct.ExactKernel</c>) sums in double, one thread per
/// element, k ascending, as the CPU backend does.</item>
/// </list>
/// <para>Nor do they need anything else from it: no warp intrinsics (PoCL has none) and no maths beyond a
/// minimum, a one-line helper. The runtime contexts therefore do not enable ILGPU.Algorithms; only
/// <see cref="PtxCompiler"/> does (see there).</para>
/// </remarks>
internal static class KernelCatalog
{
    private static readonly Lazy<IReadOnlyList<CatalogedKernel>> all =
        new(() => Scan(typeof(KernelCatalog).Assembly));

    /// <summary>The kernels of the CopaKernels.Gpu assembly, sorted by <see cref="CatalogedKernel.Name"/>
    /// (ordinal), so the order and the names are the same on every run.</summary>
    public static IReadOnlyList<CatalogedKernel> All => all.Value;

    /// <summary>The kernel called <paramref name="name"/> in <see cref="All"/>.</summary>
    /// <exception cref="KeyNotFoundException">No kernel has that name.</exception>
    public static CatalogedKernel Find(string name) =>
        All.FirstOrDefault(k => k.Name == name)
        ?? throw new KeyNotFoundException($"no kernel named '{name}' in the catalogue of {typeof(KernelCatalog).Assembly.GetName().Name}");

    /// <summary>
    /// The methods of <paramref name="assembly"/> that carry <see cref="GpuKernelAttribute"/>
    /// (public or not, static or not: a misplaced attribute is listed, and then fails to compile,
    /// rather than being silently ignored), sorted by name. The library's own list is <see cref="All"/>;
    /// this overload lets tests catalogue kernels of other assemblies the same way.
    /// </summary>
    /// <param name="assembly">The assembly to scan.</param>
    public static IReadOnlyList<CatalogedKernel> Scan(Assembly assembly)
    {
        ArgumentNullException.ThrowIfNull(assembly);
        const BindingFlags Everything = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static
            | BindingFlags.Instance | BindingFlags.DeclaredOnly;
        var found = new List<(MethodInfo Method, KernelGrouping Grouping)>();
        foreach (var type in LoadableTypes(assembly))
        {
            foreach (var method in type.GetMethods(Everything))
            {
                if (method.GetCustomAttribute<GpuKernelAttribute>() is { } attribute)
                    found.Add((method, attribute.Grouping));
            }
        }

        // Overloads get their parameter list appended, so every name stays unique and stable.
        var kernels = found
            .GroupBy(k => BaseName(k.Method))
            .SelectMany(g => g.Count() == 1
                ? g.Select(k => new CatalogedKernel(g.Key, k.Method, k.Grouping))
                : g.Select(k => new CatalogedKernel(g.Key + ParameterList(k.Method), k.Method, k.Grouping)))
            .OrderBy(k => k.Name, StringComparer.Ordinal)
            .ToList();
        return kernels.AsReadOnly();
    }

    private static string BaseName(MethodInfo method) =>
        (method.DeclaringType?.FullName ?? "?").Replace('+', '.') + "." + method.Name;

    private static string ParameterList(MethodInfo method) =>
        "(" + string.Join(",", method.GetParameters().Select(p => TypeName(p.ParameterType))) + ")";

    // Short, readable and stable: ArrayView`1[System.Single] becomes ArrayView<Single>.
    private static string TypeName(Type type)
    {
        if (!type.IsGenericType)
            return type.Name;
        var name = type.Name;
        int tick = name.IndexOf('`', StringComparison.Ordinal);
        return (tick < 0 ? name : name[..tick]) + "<" + string.Join(",", type.GetGenericArguments().Select(TypeName)) + ">";
    }

    // A type that cannot be loaded (missing optional dependency) must not hide the others.
    private static IEnumerable<Type> LoadableTypes(Assembly assembly)
    {
        try
        {
            return assembly.GetTypes();
        }
        catch (ReflectionTypeLoadException e)
        {
            return e.Types.OfType<Type>();
        }
    }
}
