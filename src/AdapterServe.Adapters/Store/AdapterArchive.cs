using System.Formats.Tar;
using System.IO.Compression;

namespace AdapterServe.Adapters.Store;

/// <param name="MaxEntries">Most entries (files, folders, anything) the archive may hold.</param>
/// <param name="MaxUncompressedBytes">Most bytes its entries may expand to.</param>
public sealed record ArchiveLimits(int MaxEntries, long MaxUncompressedBytes);

/// <summary>
/// Takes the adapter files out of an uploaded <c>.zip</c> or <c>.tar.gz</c> of an adapter directory (files at the root
/// or inside one top folder). Every entry is checked, not only the ones kept: no absolute paths or <c>..</c>
/// segments (zip-slip), no symbolic or hard links, no devices, no duplicate names, at most
/// <see cref="ArchiveLimits.MaxEntries"/> entries and <see cref="ArchiveLimits.MaxUncompressedBytes"/> bytes.
/// Only files some kind places (<see cref="AdapterKinds.Places"/>, nested folders included) are written to disk;
/// other files at the adapter folder's top (a README) are left behind, and a nested file no kind places is refused
/// rather than silently dropped.
/// </summary>
public static class AdapterArchive
{
    /// <summary>The files whose presence marks the adapter folder (adapter_model.bin only to say why it is refused).</summary>
    public static readonly string[] PeftFileNames = [AdapterValidator.ConfigFileName, AdapterValidator.WeightsFileName, AdapterValidator.PickleFileName];

    private enum EntryKind { File, Directory, Link, Metadata, Other }

    private sealed record Entry(string RawName, EntryKind Kind, long DeclaredLength, Func<Stream> Open);

    /// <summary>Extracts into <paramref name="targetDirectory"/> the files <paramref name="kinds"/> place and returns the adapter folder.</summary>
    public static string ExtractPeftFiles(string archivePath, string targetDirectory, ArchiveLimits limits, AdapterKinds kinds)
    {
        ArgumentNullException.ThrowIfNull(kinds);
        Directory.CreateDirectory(targetDirectory);
        string target = Path.GetFullPath(targetDirectory);
        try
        {
            using var stream = new FileStream(archivePath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            Span<byte> magic = stackalloc byte[4];
            int read = stream.ReadAtLeast(magic, 4, throwOnEndOfStream: false);
            stream.Position = 0;
            if (read >= 4 && magic[0] == 'P' && magic[1] == 'K' && magic[2] is 3 or 5) ExtractZip(stream, target, limits, kinds);
            else if (read >= 2 && magic[0] == 0x1F && magic[1] == 0x8B) ExtractTarGz(stream, target, limits, kinds);
            else throw Invalid("the 'file' part is neither a .zip nor a .tar.gz archive", "unsupported_archive");
        }
        catch (InvalidDataException e) { throw Invalid($"the archive is corrupt: {e.Message}", "corrupt_archive"); }
        catch (EndOfStreamException) { throw Invalid("the archive is truncated", "corrupt_archive"); }
        catch (FormatException e) { throw Invalid($"the archive is corrupt: {e.Message}", "corrupt_archive"); }
        catch (NotSupportedException e) { throw Invalid($"the archive uses an unsupported feature: {e.Message}", "unsupported_archive"); }
        catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException)
        {
            throw Invalid($"the archive cannot be extracted: {e.Message.Replace(target, "<adapter>")}", "corrupt_archive");
        }
        return LocatePeftDirectory(target);
    }

    private static void ExtractZip(Stream stream, string target, ArchiveLimits limits, AdapterKinds kinds)
    {
        using var zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true);
        if (zip.Entries.Count > limits.MaxEntries)
            throw Invalid($"the archive has {zip.Entries.Count} entries (at most {limits.MaxEntries})", "archive_too_many_entries");
        Extract(zip.Entries.Select(e =>
        {
            const int typeMask = 0xF000, symlink = 0xA000, regular = 0x8000, directory = 0x4000;
            int unixType = (e.ExternalAttributes >> 16) & typeMask;
            var kind = unixType == symlink ? EntryKind.Link
                : e.FullName.EndsWith('/') || e.FullName.EndsWith('\\') || unixType == directory ? EntryKind.Directory
                : unixType is 0 or regular ? EntryKind.File
                : EntryKind.Other;
            return new Entry(e.FullName, kind, e.Length, e.Open);
        }), target, limits, kinds);
    }

    private static void ExtractTarGz(Stream stream, string target, ArchiveLimits limits, AdapterKinds kinds)
    {
        using var gzip = new GZipStream(stream, CompressionMode.Decompress, leaveOpen: true);
        using var tar = new TarReader(gzip);
        Extract(TarEntries(tar), target, limits, kinds);
    }

    private static IEnumerable<Entry> TarEntries(TarReader tar)
    {
        while (tar.GetNextEntry(copyData: false) is { } e)
        {
            var kind = e.EntryType switch
            {
                TarEntryType.GlobalExtendedAttributes => EntryKind.Metadata,
                TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile => EntryKind.File,
                TarEntryType.Directory => EntryKind.Directory,
                TarEntryType.SymbolicLink or TarEntryType.HardLink => EntryKind.Link,
                _ => EntryKind.Other,
            };
            yield return new Entry(e.Name, kind, e.Length, () => e.DataStream ?? Stream.Null);
        }
    }

    private static void Extract(IEnumerable<Entry> entries, string target, ArchiveLimits limits, AdapterKinds kinds)
    {
        int count = 0;
        long declared = 0, written = 0;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in entries)
        {
            if (++count > limits.MaxEntries)
                throw Invalid($"the archive has more than {limits.MaxEntries} entries", "archive_too_many_entries");
            if (entry.Kind == EntryKind.Metadata) continue;
            string shown = Shown(entry.RawName);
            if (entry.Kind == EntryKind.Link)
                throw Invalid($"archive entry '{shown}' is a link; links are not allowed", "archive_link");
            if (entry.Kind == EntryKind.Other)
                throw Invalid($"archive entry '{shown}' is not a regular file or folder", "archive_special_entry");
            var segments = SafeSegments(entry.RawName, shown);
            if (segments.Count == 0) continue;
            string relative = string.Join('/', segments);
            if (!seen.Add(relative))
                throw Invalid($"archive entry '{shown}' appears more than once", "archive_duplicate_entry");
            if (entry.Kind == EntryKind.Directory) continue;

            declared += Math.Max(0, entry.DeclaredLength);
            if (declared > limits.MaxUncompressedBytes)
                throw TooLarge(limits);
            if (!Placed(segments, kinds))
            {
                if (segments.Count <= 2) continue;   // a file at the adapter folder's top that no kind uses (README.md): left behind
                throw Invalid($"archive entry '{shown}' is in a folder no adapter kind uses (adapter files: {kinds.DescribeFiles()}); " +
                    "refusing rather than dropping it", "archive_unplaced_entry");
            }

            string path = Path.GetFullPath(Path.Combine(target, Path.Combine([.. segments])));
            if (!path.StartsWith(target + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw Invalid($"archive entry '{shown}' would be written outside the adapter folder", "archive_path_escape");
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            using var output = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
            using var input = entry.Open();
            var buffer = new byte[1 << 16];
            int n;
            while ((n = input.Read(buffer)) > 0)
            {
                written += n;
                if (written > limits.MaxUncompressedBytes) throw TooLarge(limits);
                output.Write(buffer, 0, n);
            }
        }
    }

    /// <summary>Some kind places the entry, with the adapter folder at the archive's root or as its one top folder.</summary>
    private static bool Placed(List<string> segments, AdapterKinds kinds) =>
        kinds.Places(segments) || (segments.Count > 1 && kinds.Places(segments[1..]))
        || (segments.Count <= 2 && segments[^1] == AdapterValidator.PickleFileName);

    /// <summary>The path's segments, refusing absolute paths, drive letters, '..' and NUL; '.' and empty segments dropped.</summary>
    private static List<string> SafeSegments(string rawName, string shown)
    {
        string name = rawName.Replace('\\', '/');
        if (name.Contains('\0') || name.StartsWith('/') || (name.Length >= 2 && char.IsAsciiLetter(name[0]) && name[1] == ':'))
            throw Invalid($"archive entry '{shown}' has an absolute path; entries must stay inside the adapter folder", "archive_path_escape");
        var segments = name.Split('/', StringSplitOptions.RemoveEmptyEntries).Where(s => s != ".").ToList();
        if (segments.Contains(".."))
            throw Invalid($"archive entry '{shown}' contains '..'; entries must stay inside the adapter folder", "archive_path_escape");
        return segments;
    }

    /// <summary>The extraction root when it holds PEFT files, else its one top folder that does.</summary>
    private static string LocatePeftDirectory(string root)
    {
        static bool HoldsPeftFiles(string dir) => PeftFileNames.Any(f => File.Exists(Path.Combine(dir, f)));
        if (HoldsPeftFiles(root)) return root;
        var folders = Directory.GetDirectories(root).Where(HoldsPeftFiles).ToList();
        return folders.Count switch
        {
            1 => folders[0],
            0 => throw Invalid($"the archive holds no {AdapterValidator.ConfigFileName} or {AdapterValidator.WeightsFileName} at its root or inside one top folder", "missing_adapter_config"),
            _ => throw Invalid($"the archive holds several adapter folders ({string.Join(", ", folders.Select(Path.GetFileName).Order(StringComparer.Ordinal))}); upload one adapter at a time", "invalid_archive_layout"),
        };
    }

    private static string Shown(string name) =>
        string.Concat(name.Take(200).Select(c => char.IsControl(c) ? $"\\u{(int)c:x4}" : c.ToString()));

    private static AdapterValidationException Invalid(string message, string code) => new(message, code);

    private static AdapterValidationException TooLarge(ArchiveLimits limits) =>
        new($"the archive expands to more than {limits.MaxUncompressedBytes} bytes", "archive_too_large", 413);
}
