using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;
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
/// <remarks>
/// Reads are positional (no shared stream position), so <see cref="Read"/> may run on several threads at once;
/// only <see cref="Dispose"/> must not race with a read. The file stays open until disposed.
/// </remarks>
public sealed partial class SafetensorsFile : IDisposable
{
    readonly SafeFileHandle _file;
    readonly long _dataStart;

    SafetensorsFile(string path, SafeFileHandle file, long dataStart, SafetensorsHeader header)
    {
        Path = path;
        _file = file;
        _dataStart = dataStart;
        Tensors = header.Tensors;
        Metadata = header.Metadata;
    }

    public string Path { get; } = "";
    public IReadOnlyDictionary<string, SafetensorsEntry> Tensors { get; } = new Dictionary<string, SafetensorsEntry>();
    public IReadOnlyDictionary<string, string> Metadata { get; } = new Dictionary<string, string>();

    /// <summary>Bytes copied per read call; tensors larger than this (and than 2 GiB) are read in several chunks.</summary>
    internal long ReadChunkBytes { get; set; } = 1L << 30;

    /// <summary>Opens and validates the header (and offsets against the file size). Throws <see cref="SafetensorsFormatException"/>.</summary>
    public static SafetensorsFile Open(string path)
    {
        var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        try
        {
            var fileLength = RandomAccess.GetLength(file);
            if (fileLength < 8)
                throw SafetensorsHeader.Fail(path, $"file is {fileLength} bytes, shorter than the 8-byte header length");

            var prefix = new byte[8];
            ReadExactly(file, prefix, 0, path, "the header length");
            var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            SafetensorsHeader.CheckLength(path, fileLength, headerLength);

            var headerBytes = new byte[(int)headerLength];
            ReadExactly(file, headerBytes, 8, path, "the header");
            var dataStart = 8 + (long)headerLength;
            var header = SafetensorsHeader.Parse(path, headerBytes, fileLength - dataStart);
            return new SafetensorsFile(path, file, dataStart, header);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>Reads one tensor into native memory, converted to <paramref name="dtype"/> (default: as stored) on <paramref name="device"/>.</summary>
    public Tensor Read(string name, ScalarType? dtype = null, Device? device = null)
    {
        ObjectDisposedException.ThrowIf(_file.IsClosed, this);
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("safetensors data is little-endian; this machine is not");
        if (!Tensors.TryGetValue(name, out var entry))
            throw new KeyNotFoundException($"{Path}: no tensor named '{name}'");

        var stored = empty(entry.Shape, entry.DType.ToScalarType());
        try
        {
            ReadInto(stored, entry);
        }
        catch
        {
            stored.Dispose();
            throw;
        }

        var targetType = dtype ?? stored.dtype;
        var targetDevice = device ?? CPU;
        if (targetType == stored.dtype && targetDevice.type == DeviceType.CPU)
            return stored;
        var converted = stored.to(targetType, targetDevice);
        if (!ReferenceEquals(converted, stored))
            stored.Dispose();
        return converted;
    }

    /// <summary>Copies the entry's bytes into <paramref name="target"/>'s memory, one flat chunk at a time.</summary>
    void ReadInto(Tensor target, SafetensorsEntry entry)
    {
        var elementCount = entry.ElementCount;
        if (elementCount == 0)
            return;
        var elementSize = entry.DType.ElementSize();
        var chunkElements = Math.Max(1, Math.Min(ReadChunkBytes, int.MaxValue) / elementSize);
        using var flat = target.view(-1); // [elements], shares target's memory
        for (long first = 0; first < elementCount; first += chunkElements)
        {
            var count = Math.Min(chunkElements, elementCount - first);
            using var chunk = flat.narrow(0, first, count);
            ReadExactly(_file, chunk.bytes, _dataStart + entry.Begin + first * elementSize, Path, $"tensor '{entry.Name}'");
        }
    }

    static void ReadExactly(SafeFileHandle file, Span<byte> buffer, long offset, string path, string what)
    {
        while (!buffer.IsEmpty)
        {
            var read = RandomAccess.Read(file, buffer, offset);
            if (read == 0)
                throw SafetensorsHeader.Fail(path, $"file ended early while reading {what} (was it truncated after opening?)");
            buffer = buffer[read..];
            offset += read;
        }
    }

    public void Dispose() => _file.Dispose();
}
