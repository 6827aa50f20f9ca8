using System.Runtime.CompilerServices;
using static TorchSharp.torch;

[assembly: InternalsVisibleTo("AdapterServe.Tests")]

namespace AdapterServe.Modeling.Safetensors;

/// <summary>The safetensors dtype names, their sizes and the TorchSharp types they load as.</summary>
public static class SafetensorsDTypes
{
    static readonly Dictionary<string, SafetensorsDType> ByName = Enum.GetValues<SafetensorsDType>().ToDictionary(d => d.ToString());

    /// <summary>Names the format defines that this enum does not (sub-byte floats, complex): recognised, then refused.</summary>
    static readonly HashSet<string> OtherKnownNames = ["F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "C64"];

    /// <summary>TorchSharp 0.107 has no unsigned 16/32/64-bit and no float8 scalar types.</summary>
    public static bool IsSupported(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.U16 or SafetensorsDType.U32 or SafetensorsDType.U64 => false,
        SafetensorsDType.F8_E5M2 or SafetensorsDType.F8_E4M3 => false,
        _ => true,
    };

    public static int ElementSize(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BOOL or SafetensorsDType.U8 or SafetensorsDType.I8 => 1,
        SafetensorsDType.F8_E5M2 or SafetensorsDType.F8_E4M3 => 1,
        SafetensorsDType.I16 or SafetensorsDType.U16 or SafetensorsDType.F16 or SafetensorsDType.BF16 => 2,
        SafetensorsDType.I32 or SafetensorsDType.U32 or SafetensorsDType.F32 => 4,
        SafetensorsDType.I64 or SafetensorsDType.U64 or SafetensorsDType.F64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Not a safetensors dtype"),
    };

    /// <summary>The TorchSharp type a tensor of this dtype loads as; throws for the unsupported ones.</summary>
    public static ScalarType ToScalarType(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BOOL => ScalarType.Bool,
        SafetensorsDType.U8 => ScalarType.Byte,
        SafetensorsDType.I8 => ScalarType.Int8,
        SafetensorsDType.I16 => ScalarType.Int16,
        SafetensorsDType.F16 => ScalarType.Float16,
        SafetensorsDType.BF16 => ScalarType.BFloat16,
        SafetensorsDType.I32 => ScalarType.Int32,
        SafetensorsDType.F32 => ScalarType.Float32,
        SafetensorsDType.F64 => ScalarType.Float64,
        SafetensorsDType.I64 => ScalarType.Int64,
        _ => throw new NotSupportedException($"safetensors dtype {dtype} has no TorchSharp 0.107 equivalent"),
    };

    /// <summary>The safetensors dtype a TorchSharp tensor is written as; null for types the format cannot hold here (complex, quantized).</summary>
    public static SafetensorsDType? FromScalarType(ScalarType type) => type switch
    {
        ScalarType.Bool => SafetensorsDType.BOOL,
        ScalarType.Byte => SafetensorsDType.U8,
        ScalarType.Int8 => SafetensorsDType.I8,
        ScalarType.Int16 => SafetensorsDType.I16,
        ScalarType.Float16 => SafetensorsDType.F16,
        ScalarType.BFloat16 => SafetensorsDType.BF16,
        ScalarType.Int32 => SafetensorsDType.I32,
        ScalarType.Float32 => SafetensorsDType.F32,
        ScalarType.Float64 => SafetensorsDType.F64,
        ScalarType.Int64 => SafetensorsDType.I64,
        _ => null,
    };

    /// <summary>Parses a header dtype name (exact spelling). Null and <paramref name="problem"/> set when unknown or unsupported.</summary>
    internal static SafetensorsDType? Parse(string name, out string? problem)
    {
        if (ByName.TryGetValue(name, out var dtype))
        {
            problem = dtype.IsSupported() ? null : $"dtype {name} is not supported (TorchSharp 0.107 has no {Describe(dtype)} type)";
            return problem is null ? dtype : null;
        }
        problem = OtherKnownNames.Contains(name)
            ? $"dtype {name} is not supported"
            : $"unknown dtype '{name}'";
        return null;
    }

    static string Describe(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.U16 => "uint16",
        SafetensorsDType.U32 => "uint32",
        SafetensorsDType.U64 => "uint64",
        _ => "float8",
    };
}
