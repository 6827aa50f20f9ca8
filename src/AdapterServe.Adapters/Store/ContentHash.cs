using System.Security.Cryptography;
using System.Text;

namespace AdapterServe.Adapters.Store;

/// <summary>One file of a stored adapter version.</summary>
public sealed record StoredFile(string Name, long Bytes, string Sha256);

/// <summary>
/// Content hash of an adapter version: <c>sha256:</c> + SHA-256 of the lines <c>"&lt;sha256 hex&gt;  &lt;file name&gt;\n"</c>
/// (the <c>sha256sum</c> format) of its files in ordinal name order.
/// </summary>
public static class ContentHash
{
    public static (string Hash, IReadOnlyList<StoredFile> Files) Compute(string directory, IEnumerable<string> fileNames)
    {
        var files = new List<StoredFile>();
        foreach (var name in fileNames.Order(StringComparer.Ordinal))
        {
            using var stream = new FileStream(Path.Combine(directory, name), FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan);
            files.Add(new StoredFile(name, stream.Length, Convert.ToHexStringLower(SHA256.HashData(stream))));
        }
        return (Combine(files), files);
    }

    public static string Combine(IEnumerable<StoredFile> files)
    {
        var lines = string.Concat(files.OrderBy(f => f.Name, StringComparer.Ordinal).Select(f => $"{f.Sha256}  {f.Name}\n"));
        return "sha256:" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(lines)));
    }
}
