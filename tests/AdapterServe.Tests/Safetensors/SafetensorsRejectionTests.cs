using System.Text;
using AdapterServe.Modeling.Safetensors;

namespace AdapterServe.Tests.Safetensors;

/// <summary>Malformed files, built byte by byte, are refused at Open with a message naming the file and the culprit.</summary>
public sealed class SafetensorsRejectionTests : IDisposable
{
    readonly SafetensorsTestFiles _files = new();

    public void Dispose() => _files.Dispose();

    static string Entry(string dtype, string shape, string offsets) => $$"""{"dtype":"{{dtype}}","shape":{{shape}},"data_offsets":{{offsets}}}""";

    void AssertRejected(byte[] bytes, params string[] fragments)
    {
        var path = _files.Save("bad.safetensors", bytes);
        var error = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains(path, error.Message);
        foreach (var fragment in fragments)
            Assert.Contains(fragment, error.Message);
    }

    void AssertRejected(string header, byte[] data, params string[] fragments) => AssertRejected(SafetensorsTestFiles.Build(header, data), fragments);

    [Fact]
    public void File_shorter_than_the_length_prefix() => AssertRejected([1, 0, 0, 0, 0], "5 bytes", "shorter than the 8-byte");

    [Fact]
    public void Header_length_past_the_end_of_the_file() =>
        AssertRejected([.. SafetensorsTestFiles.Length(40), .. "{}"u8], "header length 40", "past the end of the file (10 bytes)");

    [Fact]
    public void Header_longer_than_100_MB() =>
        AssertRejected([.. SafetensorsTestFiles.Length(100_000_001), .. "{}"u8], "100000001", "exceeds the limit of 100000000");

    [Fact]
    public void Header_length_near_u64_max() =>
        AssertRejected([.. SafetensorsTestFiles.Length(ulong.MaxValue), .. "{}"u8], "exceeds the limit");

    [Fact]
    public void Header_that_is_not_utf8()
    {
        byte[] header = [.. "{\"w"u8, 0xFF, 0xFE, .. Encoding.ASCII.GetBytes("\":" + Entry("F32", "[1]", "[0,4]") + "}")];
        AssertRejected(SafetensorsTestFiles.Build(header, SafetensorsTestFiles.LittleEndian(1f)), "not valid UTF-8");
    }

    [Theory]
    [InlineData("")]
    [InlineData("[1, 2]")]
    [InlineData(" {}")]
    [InlineData("\"text\"")]
    public void Header_that_does_not_start_with_a_brace(string header) => AssertRejected(header, [], "does not start with '{'");

    [Theory]
    [InlineData("{")]
    [InlineData("{\"w\": ")]
    [InlineData("{\"w\": {\"dtype\": \"F32\",}}")]
    [InlineData("{} trailing")]
    public void Header_that_is_not_json(string header) => AssertRejected(header, [], "not valid JSON");

    [Theory]
    [InlineData("dtype")]
    [InlineData("shape")]
    [InlineData("data_offsets")]
    public void Entry_missing_a_field(string field)
    {
        var fields = new Dictionary<string, string> { ["dtype"] = "\"F32\"", ["shape"] = "[1]", ["data_offsets"] = "[0,4]" };
        fields.Remove(field);
        var header = "{\"layer.w\":{" + string.Join(",", fields.Select(f => $"\"{f.Key}\":{f.Value}")) + "}}";
        AssertRejected(header, SafetensorsTestFiles.LittleEndian(1f), "tensor 'layer.w'", $"missing '{field}'");
    }

    [Theory]
    [InlineData("{\"layer.w\": 5}", "entry is a Number")]
    [InlineData("{\"layer.w\": [\"F32\"]}", "entry is a Array")]
    [InlineData("{\"layer.w\": {\"dtype\": 32, \"shape\": [1], \"data_offsets\": [0,4]}}", "'dtype' is a Number")]
    [InlineData("{\"layer.w\": {\"dtype\": \"F32\", \"shape\": \"1\", \"data_offsets\": [0,4]}}", "'shape' is a String")]
    [InlineData("{\"layer.w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": {\"begin\":0}}}", "'data_offsets' is a Object")]
    [InlineData("{\"layer.w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0,4]}}", "shape dimension 1.5")]
    [InlineData("{\"layer.w\": {\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0,4]}}", "shape dimension \"1\"")]
    [InlineData("{\"layer.w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0,4,8]}}", "has 3 elements")]
    [InlineData("{\"layer.w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0,null]}}", "data_offsets end null")]
    [InlineData("{\"layer.w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0,18446744073709551615]}}", "not a 64-bit integer")]
    public void Entry_field_of_the_wrong_json_type(string header, string problem) =>
        AssertRejected(header, SafetensorsTestFiles.LittleEndian(1f), "tensor 'layer.w'", problem);

    [Theory]
    [InlineData("Q7", "unknown dtype 'Q7'")]
    [InlineData("f32", "unknown dtype 'f32'")]
    [InlineData("3", "unknown dtype '3'")]
    [InlineData("U16", "dtype U16 is not supported")]
    [InlineData("U32", "dtype U32 is not supported")]
    [InlineData("U64", "dtype U64 is not supported")]
    [InlineData("F8_E4M3", "dtype F8_E4M3 is not supported")]
    [InlineData("F8_E5M2", "dtype F8_E5M2 is not supported")]
    [InlineData("F4", "dtype F4 is not supported")]
    public void Unknown_or_unsupported_dtype(string dtype, string problem) =>
        AssertRejected("{\"layer.w\":" + Entry(dtype, "[4]", "[0,4]") + "}", [1, 2, 3, 4], "tensor 'layer.w'", problem);

    [Fact]
    public void Negative_shape_dimension() =>
        AssertRejected("{\"layer.w\":" + Entry("F32", "[2,-1]", "[0,4]") + "}", SafetensorsTestFiles.LittleEndian(1f), "tensor 'layer.w'", "shape dimension -1 is negative");

    [Fact]
    public void Byte_span_that_does_not_match_the_shape() =>
        AssertRejected("{\"layer.w\":" + Entry("F32", "[3]", "[0,8]") + "}", SafetensorsTestFiles.LittleEndian(1f, 2f), "tensor 'layer.w'", "span 8 bytes", "needs 12");

    [Fact]
    public void Shape_whose_byte_count_overflows() =>
        AssertRejected("{\"layer.w\":" + Entry("F32", "[4611686018427387904,4]", "[0,4]") + "}", SafetensorsTestFiles.LittleEndian(1f), "tensor 'layer.w'", "too large");

    [Fact]
    public void Offsets_that_end_before_they_begin() =>
        AssertRejected("{\"layer.w\":" + Entry("U8", "[0]", "[4,0]") + "}", [1, 2, 3, 4], "tensor 'layer.w'", "end before they begin");

    [Fact]
    public void Offsets_past_the_data_buffer() =>
        AssertRejected("{\"a\":" + Entry("F32", "[1]", "[0,4]") + ",\"b\":" + Entry("F32", "[2]", "[4,12]") + "}",
            SafetensorsTestFiles.LittleEndian(1f, 2f), "tensor 'b'", "run past the end of the data buffer (8 bytes)");

    [Fact]
    public void Overlapping_tensors() =>
        AssertRejected("{\"a\":" + Entry("F32", "[2]", "[0,8]") + ",\"b\":" + Entry("F32", "[2]", "[4,12]") + "}",
            SafetensorsTestFiles.LittleEndian(1f, 2f, 3f), "tensor 'b'", "overlap tensor 'a'");

    [Fact]
    public void Empty_tensor_inside_another_overlaps_it() =>
        AssertRejected("{\"a\":" + Entry("F32", "[2]", "[0,8]") + ",\"e\":" + Entry("F32", "[0]", "[4,4]") + "}",
            SafetensorsTestFiles.LittleEndian(1f, 2f), "tensor 'e'", "overlap tensor 'a'");

    [Fact]
    public void Hole_between_tensors() =>
        AssertRejected("{\"a\":" + Entry("F32", "[1]", "[0,4]") + ",\"b\":" + Entry("F32", "[1]", "[8,12]") + "}",
            SafetensorsTestFiles.LittleEndian(1f, 2f, 3f), "tensor 'b'", "hole of 4 bytes after tensor 'a'");

    [Fact]
    public void Hole_at_the_start_of_the_data_buffer() =>
        AssertRejected("{\"a\":" + Entry("F32", "[1]", "[4,8]") + "}",
            SafetensorsTestFiles.LittleEndian(1f, 2f), "tensor 'a'", "hole of 4 bytes at the start");

    [Fact]
    public void Bytes_after_the_last_tensor() =>
        AssertRejected("{\"a\":" + Entry("F32", "[1]", "[0,4]") + "}",
            SafetensorsTestFiles.LittleEndian(1f, 2f), "last tensor 'a' ends at data offset 4", "holds 8 bytes", "file size does not match");

    [Fact]
    public void Data_without_any_tensor() => AssertRejected("{}", [1, 2, 3], "lists no tensor data", "holds 3 bytes");

    [Fact]
    public void Tensor_named_twice() =>
        AssertRejected("{\"a\":" + Entry("F32", "[1]", "[0,4]") + ",\"a\":" + Entry("F32", "[1]", "[4,8]") + "}",
            SafetensorsTestFiles.LittleEndian(1f, 2f), "tensor 'a'", "appears twice");

    [Theory]
    [InlineData("{\"__metadata__\": {\"format\": 1}}", "value of 'format' is a Number")]
    [InlineData("{\"__metadata__\": {\"format\": {\"x\": \"y\"}}}", "value of 'format' is a Object")]
    [InlineData("{\"__metadata__\": [\"pt\"]}", "'__metadata__' is not a JSON object of strings")]
    [InlineData("{\"__metadata__\": {}, \"__metadata__\": {}}", "'__metadata__' appears twice")]
    public void Metadata_that_is_not_a_string_map(string header, string problem) => AssertRejected(header, [], problem);
}
