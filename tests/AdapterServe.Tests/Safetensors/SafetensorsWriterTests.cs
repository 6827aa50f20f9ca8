using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Safetensors;

public sealed class SafetensorsWriterTests : IDisposable
{
    readonly SafetensorsTestFiles _files = new();

    public void Dispose() => _files.Dispose();

    public static TheoryData<ScalarType, string> SupportedTypes => new()
    {
        { ScalarType.Bool, "BOOL" }, { ScalarType.Byte, "U8" }, { ScalarType.Int8, "I8" }, { ScalarType.Int16, "I16" },
        { ScalarType.Float16, "F16" }, { ScalarType.BFloat16, "BF16" }, { ScalarType.Int32, "I32" }, { ScalarType.Float32, "F32" },
        { ScalarType.Float64, "F64" }, { ScalarType.Int64, "I64" },
    };

    static Tensor Sample(ScalarType type, params long[] shape) => type switch
    {
        ScalarType.Bool => randint(0, 2, shape).to(ScalarType.Bool),
        ScalarType.Byte => randint(0, 256, shape).to(ScalarType.Byte),
        ScalarType.Int8 or ScalarType.Int16 or ScalarType.Int32 or ScalarType.Int64 => randint(-128, 128, shape).to(type),
        _ => randn(shape).to(type),
    };

    static Dictionary<string, JsonElement> HeaderOf(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var length = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        return JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(bytes.AsSpan(8, length))!;
    }

    [Theory]
    [MemberData(nameof(SupportedTypes))]
    public void Round_trip_keeps_bytes_shape_and_dtype_of_matrix_scalar_and_empty_tensor(ScalarType type, string dtypeName)
    {
        using var scope = NewDisposeScope();
        var tensors = new Dictionary<string, Tensor>
        {
            ["matrix"] = Sample(type, 3, 5),
            ["scalar"] = Sample(type),
            ["empty"] = Sample(type, 0, 4),
        };
        var path = _files.PathOf("round.safetensors");
        SafetensorsWriter.Write(path, tensors);

        var header = HeaderOf(path);
        Assert.All(tensors.Keys, name => Assert.Equal(dtypeName, header[name].GetProperty("dtype").GetString()));

        using var file = SafetensorsFile.Open(path);
        foreach (var (name, original) in tensors)
        {
            var read = file.Read(name);
            Assert.Equal(type, read.dtype);
            Assert.Equal(original.shape, read.shape);
            Assert.True(read.bytes.SequenceEqual(original.bytes), $"bytes of '{name}' differ");
        }
    }

    [Fact]
    public void Output_matches_hand_built_bytes_with_wider_types_first_and_space_padding()
    {
        using var scope = NewDisposeScope();
        var path = _files.PathOf("exact.safetensors");
        SafetensorsWriter.Write(path, [
            new("b", tensor(new short[] { 1, -2 })),
            new("a", tensor(0.5f)),
        ]);

        var json = """{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"b":{"dtype":"I16","shape":[2],"data_offsets":[4,8]}}""";
        var padded = json.PadRight((json.Length + 7) / 8 * 8, ' ');
        byte[] expected = [.. SafetensorsTestFiles.Length((ulong)padded.Length), .. Encoding.ASCII.GetBytes(padded), 0, 0, 0, 0x3F, 1, 0, 0xFE, 0xFF];
        Assert.Equal(expected, File.ReadAllBytes(path));
    }

    [Theory]
    [InlineData("a")]
    [InlineData("ab")]
    [InlineData("abc")]
    [InlineData("abcd")]
    [InlineData("abcde")]
    [InlineData("abcdef")]
    [InlineData("abcdefg")]
    [InlineData("abcdefgh")]
    public void Data_buffer_starts_at_a_multiple_of_8(string name)
    {
        using var scope = NewDisposeScope();
        var path = _files.PathOf("aligned.safetensors");
        SafetensorsWriter.Write(path, [new(name, ones(3, dtype: ScalarType.Float64))]);

        var bytes = File.ReadAllBytes(path);
        var length = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, length % 8);
        Assert.Equal((long)(8 + length + 24), bytes.Length);
    }

    [Fact]
    public void Metadata_round_trips()
    {
        using var scope = NewDisposeScope();
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode \"quoted\" \\ back", ["empty"] = "" };
        var path = _files.PathOf("meta.safetensors");
        SafetensorsWriter.Write(path, [new("x", zeros(2))], metadata);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(metadata, file.Metadata);
    }

    [Fact]
    public void Non_contiguous_tensor_is_written_in_row_major_order()
    {
        using var scope = NewDisposeScope();
        var transposed = arange(6, dtype: ScalarType.Int64).reshape(2, 3).t(); // [3, 2]: [[0,3],[1,4],[2,5]]
        var path = _files.PathOf("t.safetensors");
        SafetensorsWriter.Write(path, [new("t", transposed)]);

        using var file = SafetensorsFile.Open(path);
        var read = file.Read("t");
        Assert.Equal([3L, 2L], read.shape);
        Assert.Equal(new long[] { 0, 3, 1, 4, 2, 5 }, read.data<long>().ToArray());
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(8)]
    [InlineData(100)]
    public void Writes_in_chunks_of_any_size(long chunkBytes)
    {
        using var scope = NewDisposeScope();
        var values = Enumerable.Range(0, 37).Select(i => i * 0.25f).ToArray();
        var path = _files.PathOf("chunks.safetensors");
        SafetensorsWriter.Write(path, [new("v", tensor(values)), new("s", tensor(new short[] { 9, 8, 7 }))], metadata: null, chunkBytes);

        var bytes = File.ReadAllBytes(path);
        var dataStart = 8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(SafetensorsTestFiles.LittleEndian(values), bytes[dataStart..(dataStart + 148)]);
        Assert.Equal(SafetensorsTestFiles.LittleEndian(9, 8, 7), bytes[(dataStart + 148)..]);
    }

    [Fact]
    public void Replaces_an_existing_file_and_leaves_no_temporary()
    {
        using var scope = NewDisposeScope();
        var path = _files.Save("w.safetensors", [1, 2, 3]);
        SafetensorsWriter.Write(path, [new("x", ones(1))]);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(["x"], file.Tensors.Keys);
        Assert.False(File.Exists(path + ".tmp"));
    }

    [Fact]
    public void Rejects_duplicate_names_the_reserved_name_and_unsupported_types()
    {
        using var scope = NewDisposeScope();
        var path = _files.PathOf("bad.safetensors");

        Assert.Contains("'x' is given twice", Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(path, [new("x", ones(1)), new("x", ones(1))])).Message);
        Assert.Contains("'__metadata__' is reserved", Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(path, [new("__metadata__", ones(1))])).Message);
        Assert.Contains("'c' has dtype ComplexFloat32", Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(path, [new("c", zeros(2, dtype: ScalarType.ComplexFloat32))])).Message);
        Assert.False(File.Exists(path));
        Assert.False(File.Exists(path + ".tmp"));
    }
}
