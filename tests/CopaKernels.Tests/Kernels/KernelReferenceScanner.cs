using System.Reflection;
using System.Reflection.Emit;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// Finds the methods an assembly turns into kernel delegates: every <c>ldftn</c> in its IL whose
/// target is a static method with a parameter of an ILGPU type (<c>Index1D</c>, <c>ArrayView&lt;T&gt;</c>,
/// ...). ILGPU kernels are loaded from such delegates (<c>LoadAutoGroupedStreamKernel(Kernel)</c> and
/// friends, directly or through a helper), so this lists the kernels the code really launches, which
/// the <c>[GpuKernel]</c> catalogue must cover; a kernel without the attribute would otherwise escape
/// the ptxas check unnoticed.
/// </summary>
internal static class KernelReferenceScanner
{
    private static readonly Dictionary<short, OpCode> opCodes = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>The static methods with an ILGPU-typed parameter that the assembly's IL takes the
    /// address of (<c>ldftn</c>), distinct.</summary>
    public static IReadOnlyList<MethodInfo> KernelDelegateTargets(Assembly assembly)
    {
        const BindingFlags Everything = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static
            | BindingFlags.Instance | BindingFlags.DeclaredOnly;
        var found = new HashSet<MethodInfo>();
        foreach (var type in assembly.GetTypes())
        {
            var bodies = type.GetMethods(Everything).Cast<MethodBase>().Concat(type.GetConstructors(Everything));
            foreach (var method in bodies)
            {
                foreach (var target in LdftnTargets(method))
                {
                    if (target is MethodInfo { IsStatic: true } m && m.GetParameters().Any(p => IsIlgpuType(p.ParameterType)))
                        found.Add(m);
                }
            }
        }
        return [.. found];
    }

    private static bool IsIlgpuType(Type type) =>
        type.Namespace is { } ns && (ns == "ILGPU" || ns.StartsWith("ILGPU.", StringComparison.Ordinal));

    private static IEnumerable<MethodBase> LdftnTargets(MethodBase method)
    {
        byte[]? il;
        try
        {
            il = method.GetMethodBody()?.GetILAsByteArray();
        }
        catch (Exception e) when (e is InvalidOperationException or BadImageFormatException)
        {
            yield break;
        }
        if (il is null)
            yield break;

        int pos = 0;
        while (pos < il.Length)
        {
            short value = il[pos++];
            if (value == 0xFE && pos < il.Length)
                value = unchecked((short)(0xFE00 | il[pos++]));
            if (!opCodes.TryGetValue(value, out var op))
                yield break;   // not an instruction start: stop rather than misread the rest
            int operandStart = pos;
            pos += OperandSize(op.OperandType, il, pos);
            if (op == OpCodes.Ldftn && operandStart + 4 <= il.Length)
            {
                int token = BitConverter.ToInt32(il, operandStart);
                var target = Resolve(method, token);
                if (target is not null)
                    yield return target;
            }
        }
    }

    private static MethodBase? Resolve(MethodBase context, int token)
    {
        try
        {
            var typeArgs = context.DeclaringType is { IsGenericType: true } t ? t.GetGenericArguments() : null;
            var methodArgs = context.IsGenericMethod ? context.GetGenericArguments() : null;
            return context.Module.ResolveMethod(token, typeArgs, methodArgs);
        }
        catch (Exception e) when (e is ArgumentException or BadImageFormatException or TypeLoadException or MissingMethodException)
        {
            return null;
        }
    }

    private static int OperandSize(OperandType type, byte[] il, int pos) => type switch
    {
        OperandType.InlineNone => 0,
        OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
        OperandType.InlineVar => 2,
        OperandType.InlineI8 or OperandType.InlineR => 8,
        OperandType.InlineSwitch => pos + 4 <= il.Length ? 4 + 4 * BitConverter.ToInt32(il, pos) : 4,
        _ => 4,   // tokens, 32-bit branch targets, InlineI, ShortInlineR
    };
}
