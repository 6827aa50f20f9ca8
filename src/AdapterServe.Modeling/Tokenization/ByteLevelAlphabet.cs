using System.Text;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>
/// GPT-2's byte-to-character table (<c>bytes_to_unicode</c>): printable Latin-1 bytes stand for themselves, the
/// other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) map to U+0100 onwards, so that space becomes 'Ġ'.
/// </summary>
internal static class ByteLevelAlphabet
{
    private static readonly char[] CharOfByte = BuildTable();
    private static readonly Dictionary<char, byte> ByteOfChar =
        Enumerable.Range(0, 256).ToDictionary(b => CharOfByte[b], b => (byte)b);

    public static char CharOf(byte b) => CharOfByte[b];

    /// <summary>The byte-level spelling of a text: its UTF-8 bytes, one alphabet character each.</summary>
    public static string Encode(string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++)
            chars[i] = CharOfByte[bytes[i]];
        return new string(chars);
    }

    /// <summary>
    /// The bytes a byte-level token stands for; a token with a character outside the alphabet (an added token
    /// such as "&lt;|im_end|&gt;" written in plain text) stands for its own UTF-8 bytes, as in Hugging Face's decoder.
    /// </summary>
    public static void AppendBytes(string token, List<byte> bytes)
    {
        foreach (char c in token)
        {
            if (!ByteOfChar.ContainsKey(c))
            {
                bytes.AddRange(Encoding.UTF8.GetBytes(token));
                return;
            }
        }
        foreach (char c in token)
            bytes.Add(ByteOfChar[c]);
    }

    private static char[] BuildTable()
    {
        var table = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            table[b] = printable ? (char)b : (char)next++;
        }
        return table;
    }
}
