using System.Buffers.Binary;
using System.Text;

namespace AdapterServe.Tests.Safetensors;

/// <summary>A temporary folder for one test, and byte-by-byte builders of safetensors files (independent of the writer).</summary>
public sealed class SafetensorsTestFiles : IDisposable
{
    readonly DirectoryInfo _root = Directory.CreateTempSubdirectory("adapterserve-safetensors-");

    public string Root => _root.FullName;

    public string PathOf(string name) => System.IO.Path.Combine(Root, name);

    /// <summary>Writes raw bytes to a file of this folder and returns its path.</summary>
    public string Save(string name, byte[] bytes)
    {
        var path = PathOf(name);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>u64 LE length of the UTF-8 <paramref name="header"/>, the header, then <paramref name="data"/>.</summary>
    public static byte[] Build(string header, params byte[] data) => Build(Encoding.UTF8.GetBytes(header), data);

    public static byte[] Build(byte[] header, byte[] data) => [.. Length((ulong)header.Length), .. header, .. data];

    public static byte[] Length(ulong n)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, n);
        return bytes;
    }

    public static byte[] LittleEndian(params short[] values) => values.SelectMany(v => BitConverter.GetBytes(v)).ToArray();
    public static byte[] LittleEndian(params ushort[] values) => values.SelectMany(v => BitConverter.GetBytes(v)).ToArray();
    public static byte[] LittleEndian(params float[] values) => values.SelectMany(v => BitConverter.GetBytes(v)).ToArray();

    public void Dispose() => _root.Delete(recursive: true);
}

