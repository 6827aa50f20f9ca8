#nullable enable
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

/// <summary>
/// Sets VER_FLG_WEAK on the Elf64_Vernaux entry that names <see cref="Version"/> in each file's
/// .gnu.version_r section, when the host's libstdc++ does not provide that version.
/// </summary>
public sealed class WeakenElfVersionNeed : Task
{
    [Required] public ITaskItem[] Files { get; set; } = Array.Empty<ITaskItem>();
    [Required] public string Version { get; set; } = "";

    private const uint ShtGnuVerneed = 0x6ffffffe;
    private const ushort VerFlgWeak = 0x2;

    private static readonly string[] LibStdCxxCandidates =
    {
        "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
        "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
    };

    public override bool Execute()
    {
        string? host = Array.Find(LibStdCxxCandidates, File.Exists);
        if (host is null) { Log.LogMessage(MessageImportance.Low, "No host libstdc++ found; leaving TorchSharp natives untouched."); return true; }
        if (Contains(File.ReadAllBytes(host), Encoding.ASCII.GetBytes(Version + "\0")))
        {
            Log.LogMessage(MessageImportance.Low, $"{host} provides {Version}; no patch needed.");
            return true;
        }
        foreach (var item in Files)
        {
            string path = item.ItemSpec;
            if (!File.Exists(path)) continue;
            try
            {
                int patched = Patch(path);
                if (patched > 0) Log.LogMessage(MessageImportance.High, $"AdapterServe: marked {Version} weak in {path} (host libstdc++ lacks it).");
            }
            catch (Exception e) { Log.LogWarning($"AdapterServe: could not patch {path}: {e.Message}"); }
        }
        return !Log.HasLoggedErrors;
    }

    private int Patch(string path)
    {
        byte[] elf = File.ReadAllBytes(path);
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F' || elf[4] != 2 || elf[5] != 1)
            throw new InvalidDataException("not a little-endian ELF64 file");
        long shoff = BitConverter.ToInt64(elf, 0x28);
        int shentsize = BitConverter.ToUInt16(elf, 0x3A), shnum = BitConverter.ToUInt16(elf, 0x3C);
        int changed = 0;
        for (int i = 0; i < shnum; i++)
        {
            long sh = shoff + (long)i * shentsize;
            if (BitConverter.ToUInt32(elf, (int)sh + 4) != ShtGnuVerneed) continue;
            long offset = BitConverter.ToInt64(elf, (int)sh + 0x18);
            int link = (int)BitConverter.ToUInt32(elf, (int)sh + 0x28);   // index of .dynstr
            int count = (int)BitConverter.ToUInt32(elf, (int)sh + 0x2C);  // number of Elf64_Verneed
            long strtab = BitConverter.ToInt64(elf, (int)(shoff + (long)link * shentsize) + 0x18);
            long vn = offset;
            for (int n = 0; n < count; n++)
            {
                int cnt = BitConverter.ToUInt16(elf, (int)vn + 2);
                long aux = vn + BitConverter.ToUInt32(elf, (int)vn + 8);
                for (int a = 0; a < cnt; a++)
                {
                    long name = strtab + BitConverter.ToUInt32(elf, (int)aux + 8);
                    ushort flags = BitConverter.ToUInt16(elf, (int)aux + 4);
                    if (ReadCString(elf, name) == Version && (flags & VerFlgWeak) == 0)
                    {
                        BitConverter.GetBytes((ushort)(flags | VerFlgWeak)).CopyTo(elf, (int)aux + 4);
                        changed++;
                    }
                    aux += BitConverter.ToUInt32(elf, (int)aux + 12);
                }
                vn += BitConverter.ToUInt32(elf, (int)vn + 12);
            }
        }
        if (changed > 0)
        {
            string tmp = path + ".patching";
            File.WriteAllBytes(tmp, elf);
            File.Copy(tmp, path, overwrite: true);
            File.Delete(tmp);
        }
        return changed;
    }

    private static string ReadCString(byte[] data, long start)
    {
        int end = (int)start;
        while (end < data.Length && data[end] != 0) end++;
        return Encoding.ASCII.GetString(data, (int)start, end - (int)start);
    }

    private static bool Contains(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && haystack[i + j] == needle[j]) j++;
            if (j == needle.Length) return true;
        }
        return false;
    }
}
