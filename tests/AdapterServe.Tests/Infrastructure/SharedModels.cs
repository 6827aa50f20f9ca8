namespace AdapterServe.Tests.Infrastructure;

/// <summary>Finds ../shared/models (the real stories260K model and its PEFT adapters) from wherever the tests run.</summary>
public static class SharedModels
{
    public static string? Root { get; } = Find();

    private static string? Find()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", "models");
            if (Directory.Exists(Path.Combine(candidate, "stories260K-hf"))) return candidate;
        }
        return null;
    }

    /// <summary>The path under shared/models, or skips the test with a clear message.</summary>
    public static string Require(string relative)
    {
        if (Root is null) Assert.Skip("../shared/models not found (the real stories260K model and adapters live there); skipping this test.");
        return Path.Combine(Root!, relative);
    }
}

/// <summary>A temporary directory deleted at dispose.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "adapterserve-tests", Guid.NewGuid().ToString("N"));
    public TempDir() => Directory.CreateDirectory(Path);
    public string Sub(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}
