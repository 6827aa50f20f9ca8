using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Modeling.Safetensors;

/// <summary>A malformed or unsupported safetensors file. The message names the file and, where known, the tensor.</summary>
public sealed class SafetensorsFormatException(string message) : Exception(message);

public enum SafetensorsDType { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E5M2, F8_E4M3 }

/// <param name="Begin">Offset of the first byte, relative to the data buffer.</param>
/// <param name="End">Offset one past the last byte, relative to the data buffer.</param>
public sealed record SafetensorsEntry(string Name, SafetensorsDType DType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// An opened, fully validated safetensors file (methods.md §1). Tensor bytes go straight from the file into
/// native tensor memory; the whole file is never copied into a managed array.
/// </summary>
public sealed partial class SafetensorsFile : IDisposable
{
    public string Path { get; } = "";
    public IReadOnlyDictionary<string, SafetensorsEntry> Tensors { get; } = new Dictionary<string, SafetensorsEntry>();
    public IReadOnlyDictionary<string, string> Metadata { get; } = new Dictionary<string, string>();

    /// <summary>Opens and validates the header (and offsets against the file size). Throws <see cref="SafetensorsFormatException"/>.</summary>
    public static SafetensorsFile Open(string path) => throw new NotImplementedException();

    /// <summary>Reads one tensor into native memory, converted to <paramref name="dtype"/> (default: as stored) on <paramref name="device"/>.</summary>
    public Tensor Read(string name, ScalarType? dtype = null, Device? device = null) => throw new NotImplementedException();

    public void Dispose() { }
}

public static partial class SafetensorsWriter
{
    /// <summary>Writes tensors (any supported dtype, made contiguous on the CPU) and optional metadata.</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
        => throw new NotImplementedException();
}
