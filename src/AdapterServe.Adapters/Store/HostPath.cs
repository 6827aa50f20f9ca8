using System.Runtime.InteropServices;

namespace AdapterServe.Adapters.Store;

/// <summary>What a path names, without following a symbolic link at its last component.</summary>
public enum HostFileKind { Missing, RegularFile, Directory, SymbolicLink, Other }

/// <summary>
/// Paths on the server's machine as path registration (<c>load_lora_adapter</c>) sees them: <see cref="Resolve"/> is
/// <c>realpath</c> (every symbolic link of every component followed, <c>..</c> applied after resolving), and
/// <see cref="KindOf"/> tells a regular file from a FIFO, device or socket before anything is opened (opening a FIFO
/// for reading blocks until a writer comes).
/// </summary>
public static partial class HostPath
{
    private const int MaxLinks = 40;

    /// <summary>The absolute path with every symbolic link resolved (missing trailing components are kept as written).</summary>
    /// <exception cref="IOException">More than 40 links (a loop).</exception>
    public static string Resolve(string path)
    {
        string absolute = Path.IsPathRooted(path) ? path : Path.Join(Environment.CurrentDirectory, path);
        string current = Path.GetPathRoot(absolute)!;
        var pending = new Stack<string>(Components(absolute[current.Length..]).Reverse());
        int links = 0;
        while (pending.TryPop(out var part))
        {
            if (part == ".") continue;
            if (part == "..") { current = Path.GetDirectoryName(current) ?? current; continue; }
            string next = Path.Join(current, part);
            if (new FileInfo(next).LinkTarget is not { } target) { current = next; continue; }
            if (++links > MaxLinks) throw new IOException("too many levels of symbolic links");
            if (Path.IsPathRooted(target)) current = Path.GetPathRoot(target)!;
            string rest = Path.IsPathRooted(target) ? target[current.Length..] : target;
            foreach (var p in Components(rest).Reverse()) pending.Push(p);
        }
        return current;
    }

    /// <summary>True when <paramref name="path"/> is <paramref name="folder"/> or lies inside it (both already resolved).</summary>
    public static bool IsUnder(string path, string folder)
    {
        string root = Path.TrimEndingDirectorySeparator(folder);
        return path == root || path.StartsWith(root + Path.DirectorySeparatorChar, StringComparison.Ordinal)
            || (root.Length > 0 && root[^1] == Path.DirectorySeparatorChar && path.StartsWith(root, StringComparison.Ordinal));
    }

    /// <summary>The kind of what <paramref name="path"/> names; a symbolic link is reported as one, not followed.</summary>
    public static HostFileKind KindOf(string path)
    {
        var info = new FileInfo(path);
        if (info.LinkTarget is not null) return HostFileKind.SymbolicLink;
        if (Directory.Exists(path)) return HostFileKind.Directory;
        if (!info.Exists) return HostFileKind.Missing;
        return OperatingSystem.IsLinux() ? LinuxKind(path) : HostFileKind.RegularFile;
    }

    private static IEnumerable<string> Components(string path) =>
        path.Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar).Where(p => p.Length > 0);

    // statx(2): one layout on every Linux architecture (unlike struct stat); stx_mode is the u16 at offset 28.
    private const int AtFdCwd = -100, AtSymlinkNoFollow = 0x100;
    private const uint StatxType = 0x1;
    private const int ModeOffset = 28, FileTypeMask = 0xF000, RegularType = 0x8000, DirectoryType = 0x4000, LinkType = 0xA000;

    [DllImport("libc.so.6", EntryPoint = "statx", SetLastError = true)]
    private static extern int Statx(int directoryFd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, byte[] buffer);

    private static HostFileKind LinuxKind(string path)
    {
        var buffer = new byte[256];
        try
        {
            if (Statx(AtFdCwd, path, AtSymlinkNoFollow, StatxType, buffer) != 0) return HostFileKind.Missing;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // Not glibc: no FIFO check possible here; reads are still bounded in time by the caller.
            return HostFileKind.RegularFile;
        }
        return (BitConverter.ToUInt16(buffer, ModeOffset) & FileTypeMask) switch
        {
            RegularType => HostFileKind.RegularFile,
            DirectoryType => HostFileKind.Directory,
            LinkType => HostFileKind.SymbolicLink,
            _ => HostFileKind.Other,
        };
    }
}
