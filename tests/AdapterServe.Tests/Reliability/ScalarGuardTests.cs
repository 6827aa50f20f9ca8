using AdapterServe.Modeling;
using TorchSharp;

namespace AdapterServe.Tests.Reliability;

/// <summary>
/// Issue 8, part 1: no code in src/ hands TorchSharp a Scalar except <see cref="TorchScalars"/>, which keeps each one
/// alive across its native call. Read from the compiled IL, so operators (<c>a + b</c>) and implicit conversions count.
/// </summary>
public class ScalarGuardTests
{
    private const string Sanctioned = "AdapterServe.Modeling.TorchScalars";

    /// <summary>Every assembly built from src/.</summary>
    public static readonly TheoryData<string> SourceAssemblies = new()
    {
        "AdapterServe.Modeling", "AdapterServe.Adapters", "AdapterServe.Engine", "AdapterServe.Server", "AdapterServe.Bench",
    };

    private static readonly Lazy<ScalarCallScanner> Scanner =
        new(() => ScalarCallScanner.ForTorchSharp(typeof(torch).Assembly.Location));

    private static string AssemblyPath(string name)
    {
        string path = Path.Combine(AppContext.BaseDirectory, name + ".dll");
        Assert.True(File.Exists(path), $"{path} is missing: the guard would scan nothing");
        return path;
    }

    [Theory]
    [MemberData(nameof(SourceAssemblies))]
    public void Source_assembly_passes_no_Scalar_to_TorchSharp_outside_TorchScalars(string assembly)
    {
        var calls = Scanner.Value.Scan(AssemblyPath(assembly), Sanctioned);
        Assert.True(calls.Count == 0,
            $"{calls.Count} call(s) in {assembly} hand TorchSharp a Scalar that may be finalized during the native call " +
            "(issue 8). Use AdapterServe.Modeling.TorchScalars (Add, AddInPlace, Mul, Div, IndexAddInPlace, …) or an " +
            "overload without a Scalar; add a method there if none fits:\n  " + string.Join("\n  ", calls.Distinct()));
    }

    [Fact]
    public void Scanner_flags_exactly_the_deliberately_bad_samples()
    {
        var flagged = Scanner.Value.Scan(typeof(ScalarGuardSamples).Assembly.Location, Sanctioned)
            .Where(c => c.Caller.StartsWith(nameof(ScalarGuardSamples) + ".", StringComparison.Ordinal))
            .Select(c => c.ToString())
            .Order(StringComparer.Ordinal);
        string[] expected =
        [
            "ScalarGuardSamples.Bad → torch.Tensor.op_Addition(torch.Tensor, torch.Tensor)",
            "ScalarGuardSamples.BadMul → Scalar.op_Implicit(Double)",
            "ScalarGuardSamples.BadMul → torch.Tensor.mul(Scalar)",
        ];
        Assert.Equal(expected.Order(StringComparer.Ordinal), flagged);
    }

    [Fact]
    public void The_sanctioned_helper_is_the_only_exemption()
    {
        // TorchScalars itself calls Scalar-taking members; scanned without the exemption it must show up, so the
        // clean result for AdapterServe.Modeling comes from the exemption, not from a blind scanner.
        var calls = Scanner.Value.Scan(AssemblyPath("AdapterServe.Modeling"), sanctionedType: "None.Such");
        Assert.Contains(calls, c => c.Caller == "TorchScalars.Add" && c.Member == "torch.Tensor.add(torch.Tensor, Scalar)");
        Assert.Contains(calls, c => c.Caller == "TorchScalars..cctor" && c.Member == "ScalarExtensionMethods.ToScalar(Int32)");
        Assert.All(calls, c => Assert.StartsWith("TorchScalars.", c.Caller));
    }

    [Theory]
    [InlineData("TorchSharp.torch/Tensor::op_Addition(TorchSharp.torch/Tensor, TorchSharp.torch/Tensor)TorchSharp.torch/Tensor", true)]
    [InlineData("TorchSharp.torch/Tensor::add_(TorchSharp.torch/Tensor)TorchSharp.torch/Tensor", true)]
    [InlineData("TorchSharp.torch/Tensor::op_Multiply(System.Double, TorchSharp.torch/Tensor)TorchSharp.torch/Tensor", true)]
    [InlineData("TorchSharp.torch/linalg::vector_norm(TorchSharp.torch/Tensor, System.Double, System.Int64[], System.Boolean)TorchSharp.torch/Tensor", true)]
    [InlineData("TorchSharp.torch/Tensor::square()TorchSharp.torch/Tensor", true)]
    [InlineData("TorchSharp.torch/Tensor::mul(TorchSharp.torch/Tensor)TorchSharp.torch/Tensor", false)]
    [InlineData("TorchSharp.torch/Tensor::sub(TorchSharp.torch/Tensor)TorchSharp.torch/Tensor", false)]
    [InlineData("TorchSharp.torch/Tensor::matmul(TorchSharp.torch/Tensor)TorchSharp.torch/Tensor", false)]
    public void TorchSharp_members_that_build_a_Scalar_inside_are_found_through_their_IL(string member, bool buildsScalar)
    {
        // Ground truth from TorchSharp 0.107's source: add(t) => add(t, 1); a + b => a.add(b); square() => pow(2);
        // vector_norm passes ord.ToScalar(); mul(t), sub(t) and matmul(t) call native code with tensor handles only.
        Assert.Equal(buildsScalar, Scanner.Value.ScalarMakingMembers.Contains(member));
    }
}
