using System.Buffers.Binary;
using System.Text.Encodings.Web;
using System.Text.Json;
using static TorchSharp.torch;

namespace AdapterServe.Modeling.Safetensors;

/// <summary>
/// Writes safetensors files (methods.md §1). Data is laid out by element size, largest first (insertion order
/// otherwise), so that every tensor is aligned to its element size; the header lists tensors in that order and
/// is padded with spaces to a multiple of 8 bytes. Files are written to <c>path.tmp</c> and then renamed.
/// </summary>
public static partial class SafetensorsWriter
{
    const long DefaultChunkBytes = 1L << 30;

    /// <summary>Writes tensors (any supported dtype, made contiguous on the CPU) and optional metadata.</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
        => Write(path, tensors, metadata, DefaultChunkBytes);

    /// <summary>
    /// Writes a sharded checkpoint into <paramref name="directory"/>: <c>model-0000i-of-0000n.safetensors</c> files of at most
    /// <paramref name="maxShardBytes"/> bytes of tensor data each (a larger tensor gets a shard of its own), in the given order,
    /// plus <c>model.safetensors.index.json</c> mapping every tensor to its shard.
    /// </summary>
    public static void WriteSharded(string directory, IEnumerable<KeyValuePair<string, Tensor>> tensors, long maxShardBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxShardBytes);
        var shards = new List<List<KeyValuePair<string, Tensor>>> { new() };
        var names = new HashSet<string>(StringComparer.Ordinal);
        long shardBytes = 0, totalBytes = 0;
        foreach (var item in tensors)
        {
            if (!names.Add(item.Key))
                throw new ArgumentException($"Tensor '{item.Key}' is given twice", nameof(tensors));
            var bytes = item.Value.numel() * item.Value.element_size();
            if (shards[^1].Count > 0 && shardBytes + bytes > maxShardBytes)
            {
                shards.Add([]);
                shardBytes = 0;
            }
            shards[^1].Add(item);
            shardBytes += bytes;
            totalBytes += bytes;
        }

        Directory.CreateDirectory(directory);
        var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
        for (var i = 0; i < shards.Count; i++)
        {
            var fileName = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            foreach (var (name, _) in shards[i])
                weightMap.Add(name, fileName);
            Write(System.IO.Path.Combine(directory, fileName), shards[i], metadata: null, DefaultChunkBytes);
        }

        var index = JsonSerializer.SerializeToUtf8Bytes(new
        {
            metadata = new { total_size = totalBytes },
            weight_map = weightMap,
        }, new JsonSerializerOptions { WriteIndented = true });
        WriteAtomically(System.IO.Path.Combine(directory, SafetensorsCheckpoint.IndexFileName), stream => stream.Write(index));
    }

    /// <summary><see cref="Write(string, IEnumerable{KeyValuePair{string, Tensor}}, IReadOnlyDictionary{string, string}?)"/> copying at most <paramref name="chunkBytes"/> per write call.</summary>
    internal static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata, long chunkBytes)
    {
        using var scope = NewDisposeScope();
        var prepared = Prepare(tensors)
            .OrderByDescending(t => t.DType.ElementSize()) // stable: insertion order within one element size
            .ToList();
        var header = Header(prepared, metadata);

        WriteAtomically(path, stream =>
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
            stream.Write(prefix);
            stream.Write(header);
            foreach (var tensor in prepared)
                WriteData(stream, tensor, chunkBytes);
        });
    }

    sealed record Prepared(string Name, SafetensorsDType DType, long[] Shape, Tensor Data)
    {
        public long ByteCount => Data.numel() * DType.ElementSize();
    }

    static List<Prepared> Prepare(IEnumerable<KeyValuePair<string, Tensor>> tensors)
    {
        var prepared = new List<Prepared>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, tensor) in tensors)
        {
            if (name == "__metadata__")
                throw new ArgumentException("'__metadata__' is reserved and cannot name a tensor", nameof(tensors));
            if (!names.Add(name))
                throw new ArgumentException($"Tensor '{name}' is given twice", nameof(tensors));
            var dtype = SafetensorsDTypes.FromScalarType(tensor.dtype)
                ?? throw new ArgumentException($"Tensor '{name}' has dtype {tensor.dtype}, which safetensors cannot hold here", nameof(tensors));
            var data = tensor.detach().cpu().contiguous(); // disposed with the writer's scope
            prepared.Add(new Prepared(name, dtype, tensor.shape, data));
        }
        return prepared;
    }

    /// <summary>The JSON header, right-padded with spaces so that the data buffer starts at a multiple of 8.</summary>
    static byte[] Header(List<Prepared> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        using var json = new MemoryStream();
        using (var writer = new Utf8JsonWriter(json, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            writer.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                writer.WriteStartObject("__metadata__");
                foreach (var (key, value) in metadata)
                    writer.WriteString(key, value);
                writer.WriteEndObject();
            }
            long offset = 0;
            foreach (var tensor in tensors)
            {
                writer.WriteStartObject(tensor.Name);
                writer.WriteString("dtype", tensor.DType.ToString());
                writer.WriteStartArray("shape");
                foreach (var dim in tensor.Shape)
                    writer.WriteNumberValue(dim);
                writer.WriteEndArray();
                writer.WriteStartArray("data_offsets");
                writer.WriteNumberValue(offset);
                writer.WriteNumberValue(offset + tensor.ByteCount);
                writer.WriteEndArray();
                writer.WriteEndObject();
                offset += tensor.ByteCount;
            }
            writer.WriteEndObject();
        }
        var length = (int)json.Length;
        var padded = new byte[(length + 7) / 8 * 8];
        json.GetBuffer().AsSpan(0, length).CopyTo(padded);
        padded.AsSpan(length).Fill((byte)' ');
        return padded;
    }

    /// <summary>Streams the tensor's native memory to the file, one flat chunk at a time (tensors may exceed 2 GiB).</summary>
    static void WriteData(FileStream stream, Prepared tensor, long chunkBytes)
    {
        var elementCount = tensor.Data.numel();
        if (elementCount == 0)
            return;
        var elementSize = tensor.DType.ElementSize();
        var chunkElements = Math.Max(1, Math.Min(chunkBytes, int.MaxValue) / elementSize);
        using var flat = tensor.Data.view(-1); // [elements]
        for (long first = 0; first < elementCount; first += chunkElements)
        {
            using var chunk = flat.narrow(0, first, Math.Min(chunkElements, elementCount - first));
            stream.Write(chunk.bytes);
        }
    }

    /// <summary>Writes <c>path.tmp</c>, flushes it to disk, then renames it over <paramref name="path"/>.</summary>
    static void WriteAtomically(string path, Action<FileStream> write)
    {
        var temporary = path + ".tmp";
        try
        {
            using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
        }
        catch
        {
            File.Delete(temporary);
            throw;
        }
    }
}
