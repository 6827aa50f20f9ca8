namespace AdapterServe.Adapters.Store;

/// <summary>
/// A private folder <c>tmp/&lt;guid&gt;/</c> in the store's data directory where an incoming adapter is received,
/// unpacked and validated before it is renamed into place. Disposing it deletes whatever is left, so a failed
/// upload leaves the store as it was; folders left by a crash are removed when the store starts.
/// </summary>
public sealed class AdapterStaging : IDisposable
{
    private readonly AdapterKinds _kinds;
    private int _uploads;

    internal AdapterStaging(string tmpDirectory, AdapterKinds kinds)
    {
        _kinds = kinds;
        Root = Path.Combine(tmpDirectory, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(ReceivedDirectory);
        PeftDirectory = ReceivedDirectory;
    }

    public string Root { get; }

    /// <summary>Where loose adapter files are written and archives are unpacked.</summary>
    public string ReceivedDirectory => Path.Combine(Root, "received");

    /// <summary>The adapter folder: adapter_config.json and the kind's other files (moved by <see cref="UseArchive"/>).</summary>
    public string PeftDirectory { get; private set; }

    /// <summary>A fresh path for a raw uploaded file (an archive before unpacking).</summary>
    public string NewUploadPath() => Path.Combine(Root, $"upload-{Interlocked.Increment(ref _uploads)}.bin");

    /// <summary>True when some kind has a file of this name at the adapter folder's top (a loose upload part).</summary>
    public bool IsAdapterFile(string fileName) => _kinds.Places([fileName]);

    /// <summary>Creates one loose adapter file in <see cref="ReceivedDirectory"/>; refuses names no kind uses and a second copy.</summary>
    public FileStream CreateReceivedFile(string fileName)
    {
        if (!IsAdapterFile(fileName))
            throw new AdapterValidationException($"'{fileName}' is not an adapter file (expected one of: {_kinds.DescribeFiles()})", "unexpected_part");
        string path = Path.Combine(ReceivedDirectory, fileName);
        if (File.Exists(path)) throw new AdapterValidationException($"'{fileName}' was sent twice", "duplicate_part");
        return new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
    }

    /// <summary>Unpacks an archive (see <see cref="AdapterArchive"/>) into <see cref="ReceivedDirectory"/> and points <see cref="PeftDirectory"/> at its adapter folder.</summary>
    public void UseArchive(string archivePath, ArchiveLimits limits)
    {
        if (Directory.EnumerateFileSystemEntries(ReceivedDirectory).Any())
            throw new AdapterValidationException("send either one archive in the 'file' part or the loose PEFT files, not both", "conflicting_parts");
        PeftDirectory = AdapterArchive.ExtractPeftFiles(archivePath, ReceivedDirectory, limits, _kinds);
    }

    /// <summary>
    /// Copies the files of a folder on this machine that some kind places (nested folders included, see
    /// <see cref="AdapterFiles.Find"/>). Only regular files are read (a FIFO, device or socket is refused
    /// before it is opened); a file that is a symbolic link is followed only when it resolves inside one of
    /// <paramref name="linkRoots"/> (the folder itself, the allowed folders). Stops at <paramref name="cancellationToken"/>
    /// between chunks.
    /// </summary>
    public void CopyFrom(string directory, IReadOnlyList<string> linkRoots, CancellationToken cancellationToken = default)
    {
        foreach (var name in _kinds.Find(directory).Append(AdapterValidator.PickleFileName).Distinct())
        {
            string source = Path.Combine(directory, name);
            var kind = HostPath.KindOf(source);
            if (kind == HostFileKind.Missing) continue;
            if (kind == HostFileKind.SymbolicLink)
            {
                source = HostPath.Resolve(source);
                if (!linkRoots.Any(root => HostPath.IsUnder(source, root)))
                    throw new AdapterValidationException($"'{name}' in lora_path is a symbolic link out of the adapter folder; such links are not followed", "adapter_path_link");
                kind = HostPath.KindOf(source);
            }
            if (kind != HostFileKind.RegularFile)
                throw new AdapterValidationException($"'{name}' in lora_path is not a regular file (FIFOs, devices, sockets and folders are not read)", "adapter_path_not_regular");
            string target = Path.Combine(ReceivedDirectory, name);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            CopyFile(source, target, cancellationToken);
        }
    }

    private static void CopyFile(string source, string target, CancellationToken cancellationToken)
    {
        using var input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        using var output = new FileStream(target, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1);
        var buffer = new byte[1 << 20];
        int n;
        while ((n = input.Read(buffer)) > 0)
        {
            cancellationToken.ThrowIfCancellationRequested();
            output.Write(buffer, 0, n);
        }
    }

    public void Dispose()
    {
        try { if (Directory.Exists(Root)) Directory.Delete(Root, recursive: true); }
        catch (IOException) { /* removed at the next start */ }
        catch (UnauthorizedAccessException) { /* removed at the next start */ }
    }
}
