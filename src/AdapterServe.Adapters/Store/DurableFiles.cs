using System.Runtime.InteropServices;

namespace AdapterServe.Adapters.Store;

/// <summary>
/// Makes store writes survive a crash of the machine, not only of the process: file contents are flushed with
/// <c>fsync</c>, and the folders whose entries changed (a file created, a folder renamed in or out) are fsynced too,
/// since a rename is durable only once its parent folder is. On systems without POSIX folders this is a no-op.
/// </summary>
public static class DurableFiles
{
    private const int ReadOnly = 0, CloseOnExec = 0x80000;

    [DllImport("libc.so.6", EntryPoint = "open", SetLastError = true)]
    private static extern int Open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc.so.6", EntryPoint = "fsync", SetLastError = true)]
    private static extern int Fsync(int fd);

    [DllImport("libc.so.6", EntryPoint = "close")]
    private static extern int Close(int fd);

    /// <summary>Flushes a file's bytes to the disk.</summary>
    public static void FlushFile(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>Flushes a folder's entries (names created, renamed or removed in it) to the disk.</summary>
    public static void FlushDirectory(string directory)
    {
        if (!OperatingSystem.IsLinux()) return;
        int fd;
        try { fd = Open(directory, ReadOnly | CloseOnExec); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return; }
        if (fd < 0) throw new IOException($"cannot open folder '{directory}' to flush it (errno {Marshal.GetLastPInvokeError()})");
        try
        {
            if (Fsync(fd) != 0) throw new IOException($"fsync of folder '{directory}' failed (errno {Marshal.GetLastPInvokeError()})");
        }
        finally { Close(fd); }
    }
}
