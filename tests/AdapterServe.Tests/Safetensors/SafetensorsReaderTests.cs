using System.Text.Json;
using AdapterServe.Modeling.Safetensors;
using static TorchSharp.torch;

using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.Safetensors;

public sealed class SafetensorsReaderTests : IDisposable
{
    readonly SafetensorsTestFiles _files = new();

    public void Dispose() => _files.Dispose();

    [Fact]
    public void Reads_hand_built_file_with_matrix_scalar_and_empty_tensor()
    {
        var path = _files.Save("m.safetensors", SafetensorsTestFiles.Build(
            """{"m":{"dtype":"I16","shape":[2,3],"data_offsets":[0,12]},"s":{"dtype":"F32","shape":[],"data_offsets":[12,16]},"e":{"dtype":"U8","shape":[4,0],"data_offsets":[16,16]}}""",
            [.. SafetensorsTestFiles.LittleEndian(1, -2, 3, 300, -400, 32767), .. SafetensorsTestFiles.LittleEndian(2.5f)]));

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(["m", "s", "e"], file.Tensors.Keys);
        var scalar = file.Tensors["s"];
        Assert.Equal((SafetensorsDType.F32, 0, 12L, 16L, 1L), (scalar.DType, scalar.Shape.Length, scalar.Begin, scalar.End, scalar.ElementCount));

        using var m = file.Read("m");
        Assert.Equal(ScalarType.Int16, m.dtype);
        Assert.Equal([2L, 3L], m.shape);
        Assert.Equal(new short[] { 1, -2, 3, 300, -400, 32767 }, m.data<short>().ToArray());
        Assert.Equal(-400, m[1, 1].item<short>()); // row-major

        using var s = file.Read("s");
        Assert.Equal(0L, s.dim());
        Assert.Equal(2.5f, s.item<float>());

        using var e = file.Read("e");
        Assert.Equal(ScalarType.Byte, e.dtype);
        Assert.Equal([4L, 0L], e.shape);
    }

    [Fact]
    public void Header_padded_with_spaces_and_metadata_are_accepted()
    {
        var header = """{"__metadata__":{"format":"pt","note":"héllo"},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""";
        var path = _files.Save("p.safetensors", SafetensorsTestFiles.Build(header + "     ", SafetensorsTestFiles.LittleEndian(7f)));

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(new Dictionary<string, string> { ["format"] = "pt", ["note"] = "héllo" }, file.Metadata);
        Assert.Equal(["x"], file.Tensors.Keys);
        using var x = file.Read("x");
        Assert.Equal(7f, x.item<float>());
    }

    [Fact]
    public void Empty_header_with_no_data_is_a_valid_file()
    {
        var path = _files.Save("empty.safetensors", SafetensorsTestFiles.Build("{}"));
        using var file = SafetensorsFile.Open(path);
        Assert.Empty(file.Tensors);
        Assert.Empty(file.Metadata);
    }

    [Fact]
    public void Bf16_reads_as_float32_with_the_bits_shifted_into_the_high_half()
    {
        ushort[] bits = [0x3F80, 0xC000, 0x4049, 0x0001, 0x7F7F, 0x8000, 0x7F80, 0xFF80, 0x3E2A];
        var path = _files.Save("bf16.safetensors", SafetensorsTestFiles.Build(
            $$$"""{"w":{"dtype":"BF16","shape":[{{{bits.Length}}}],"data_offsets":[0,{{{bits.Length * 2}}}]}}""",
            SafetensorsTestFiles.LittleEndian(bits)));

        using var file = SafetensorsFile.Open(path);
        using var w = file.Read("w", ScalarType.Float32);

        Assert.Equal(ScalarType.Float32, w.dtype);
        var expected = bits.Select(b => BitConverter.Int32BitsToSingle(b << 16)).ToArray(); // bf16 = top half of an IEEE float32
        Assert.Equal(expected, w.data<float>().ToArray());
        Assert.Equal(1f, expected[0]);
        Assert.Equal(3.140625f, expected[2]);
    }

    [Fact]
    public void F16_reads_as_float32_equal_to_System_Half()
    {
        ushort[] bits = [0x3C00, 0xC000, 0x7BFF, 0x0001, 0x3555, 0x8000, 0x7C00, 0x0400, 0x03FF];
        var path = _files.Save("f16.safetensors", SafetensorsTestFiles.Build(
            """{"w":{"dtype":"F16","shape":[3,3],"data_offsets":[0,18]}}""",
            SafetensorsTestFiles.LittleEndian(bits)));

        using var file = SafetensorsFile.Open(path);
        using var w = file.Read("w", ScalarType.Float32);

        var expected = bits.Select(b => (float)BitConverter.UInt16BitsToHalf(b)).ToArray();
        Assert.Equal(expected, w.data<float>().ToArray());
        Assert.Equal(65504f, expected[2]);
        Assert.Equal(MathF.Pow(2, -24), expected[3]);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    [InlineData(7)]
    [InlineData(12)]
    [InlineData(1000)]
    public void Reads_a_tensor_in_chunks_of_any_size(long chunkBytes)
    {
        var values = Enumerable.Range(0, 35).Select(i => i * 1.5f - 20f).ToArray();
        var path = _files.Save("chunks.safetensors", SafetensorsTestFiles.Build(
            """{"a":{"dtype":"F32","shape":[5,7],"data_offsets":[0,140]},"b":{"dtype":"I16","shape":[3],"data_offsets":[140,146]}}""",
            [.. SafetensorsTestFiles.LittleEndian(values), .. SafetensorsTestFiles.LittleEndian(5, 6, 7)]));

        using var file = SafetensorsFile.Open(path);
        file.ReadChunkBytes = chunkBytes;
        using var a = file.Read("a");
        using var b = file.Read("b");

        Assert.Equal(values, a.data<float>().ToArray());
        Assert.Equal(new short[] { 5, 6, 7 }, b.data<short>().ToArray());
    }

    [Fact]
    public void Reads_from_several_threads_at_once_give_each_tensor_its_own_bytes()
    {
        var names = Enumerable.Range(0, 16).Select(i => $"t{i}").ToArray();
        var header = "{" + string.Join(",", names.Select((n, i) => $$"""
            "{{n}}":{"dtype":"F32","shape":[64],"data_offsets":[{{i * 256}},{{(i + 1) * 256}}]}
            """)) + "}";
        var data = Enumerable.Range(0, 16 * 64).Select(i => (float)i).ToArray();
        var path = _files.Save("threads.safetensors", SafetensorsTestFiles.Build(header, SafetensorsTestFiles.LittleEndian(data)));

        using var file = SafetensorsFile.Open(path);
        file.ReadChunkBytes = 16;
        var firsts = new float[names.Length];
        var sums = new double[names.Length];
        Parallel.For(0, names.Length, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            using var t = file.Read(names[i]);
            var values = t.data<float>().ToArray();
            firsts[i] = values[0];
            sums[i] = values.Sum(v => (double)v);
        });

        for (var i = 0; i < names.Length; i++)
        {
            Assert.Equal(i * 64f, firsts[i]);
            Assert.Equal(Enumerable.Range(i * 64, 64).Sum(v => (double)v), sums[i]);
        }
    }

    [Fact]
    public void Unknown_tensor_name_is_named_in_the_error()
    {
        var path = _files.Save("one.safetensors", SafetensorsTestFiles.Build(
            """{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", SafetensorsTestFiles.LittleEndian(1f)));
        using var file = SafetensorsFile.Open(path);

        var error = Assert.Throws<KeyNotFoundException>(() => file.Read("model.missing.weight"));
        Assert.Contains("model.missing.weight", error.Message);
        Assert.Contains(path, error.Message);
    }

    [Fact]
    public void Stories260K_tensors_have_the_shapes_of_its_config_and_the_weights_of_the_llama2c_checkpoint()
    {
        var models = SharedModels.Root;
        if (models is null || !File.Exists(System.IO.Path.Combine(models, "stories260K-hf", "model.safetensors")))
        {
            Assert.Skip("stories260K-hf not found: ../shared/models not found above the test binaries");
            return;
        }
        using var config = JsonDocument.Parse(File.ReadAllBytes(System.IO.Path.Combine(models, "stories260K-hf", "config.json")));
        long Config(string key) => config.RootElement.GetProperty(key).GetInt64();
        long vocab = Config("vocab_size"), hidden = Config("hidden_size"), inter = Config("intermediate_size");
        long layers = Config("num_hidden_layers"), heads = Config("num_attention_heads"), kvHeads = Config("num_key_value_heads");
        var headDim = hidden / heads;

        using var file = SafetensorsFile.Open(System.IO.Path.Combine(models, "stories260K-hf", "model.safetensors"));

        Assert.Equal([512L, 64L], file.Tensors["model.embed_tokens.weight"].Shape);
        Assert.Equal([vocab, hidden], file.Tensors["model.embed_tokens.weight"].Shape);
        Assert.Equal([hidden], file.Tensors["model.norm.weight"].Shape);
        for (var layer = 0; layer < layers; layer++)
        {
            var prefix = $"model.layers.{layer}.";
            Assert.Equal([heads * headDim, hidden], file.Tensors[prefix + "self_attn.q_proj.weight"].Shape);
            Assert.Equal([kvHeads * headDim, hidden], file.Tensors[prefix + "self_attn.k_proj.weight"].Shape);
            Assert.Equal([kvHeads * headDim, hidden], file.Tensors[prefix + "self_attn.v_proj.weight"].Shape);
            Assert.Equal([hidden, heads * headDim], file.Tensors[prefix + "self_attn.o_proj.weight"].Shape);
            Assert.Equal([inter, hidden], file.Tensors[prefix + "mlp.gate_proj.weight"].Shape);
            Assert.Equal([inter, hidden], file.Tensors[prefix + "mlp.up_proj.weight"].Shape);
            Assert.Equal([hidden, inter], file.Tensors[prefix + "mlp.down_proj.weight"].Shape);
            Assert.Equal([hidden], file.Tensors[prefix + "input_layernorm.weight"].Shape);
            Assert.Equal([hidden], file.Tensors[prefix + "post_attention_layernorm.weight"].Shape);
        }
        Assert.Equal(2 + 9 * layers, file.Tensors.Count);
        Assert.All(file.Tensors.Values, e => Assert.Equal(SafetensorsDType.F32, e.DType));

        // llama2.c layout: 7 int32s, then token_embedding_table [vocab, dim], then rms_att_weight [layers, dim] (both unpermuted).
        var legacy = System.IO.Path.Combine(models, "stories260K", "stories260K.bin");
        if (File.Exists(legacy))
        {
            var bytes = File.ReadAllBytes(legacy);
            float[] Floats(long offset, long count) =>
                Enumerable.Range(0, (int)count).Select(i => BitConverter.ToSingle(bytes, (int)(offset + 4 * i))).ToArray();
            using var embed = file.Read("model.embed_tokens.weight");
            Assert.Equal(Floats(28, vocab * hidden), embed.data<float>().ToArray());
            using var norm0 = file.Read("model.layers.0.input_layernorm.weight");
            Assert.Equal(Floats(28 + 4 * vocab * hidden, hidden), norm0.data<float>().ToArray());
        }
    }
}
