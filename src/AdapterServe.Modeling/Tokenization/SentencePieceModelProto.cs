using System.Text;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>
/// Writes a SentencePiece <c>ModelProto</c> (sentencepiece_model.proto) for a Hugging Face BPE vocabulary, so that
/// Microsoft.ML.Tokenizers' SentencePiece BPE can run it. SentencePiece merges the adjacent pair whose
/// concatenation has the highest score; Hugging Face applies the merge of lowest rank. Giving every piece the
/// score <c>-rank</c> of the first merge that produces it makes both pick the same merges.
/// </summary>
internal static class SentencePieceModelProto
{
    private enum PieceType { Normal = 1, Unknown = 2, Control = 3, Byte = 6 }

    /// <param name="pieces">Piece text by id; null marks an id the vocabulary does not use.</param>
    /// <param name="controlIds">Ids that text never produces (added and special tokens).</param>
    public static byte[] Build(
        IReadOnlyList<string?> pieces,
        IReadOnlyList<(string Left, string Right)> merges,
        ISet<int> controlIds,
        int unknownId,
        int bosId,
        int eosId,
        bool byteFallback)
    {
        var scoreOf = new Dictionary<string, float>(StringComparer.Ordinal);
        for (int rank = 0; rank < merges.Count; rank++)
            scoreOf.TryAdd(merges[rank].Left + merges[rank].Right, -rank);
        float unreachable = -(merges.Count + 1);

        var model = new ProtoWriter();
        for (int id = 0; id < pieces.Count; id++)
        {
            string? piece = pieces[id];
            PieceType type;
            float score = 0;
            if (piece is null)
            {
                piece = $"<unused_id_{id}>";
                type = PieceType.Control;
            }
            else if (id == unknownId)
                type = PieceType.Unknown;
            else if (controlIds.Contains(id))
                type = PieceType.Control;
            else if (byteFallback && IsByteToken(piece))
                type = PieceType.Byte;
            else
            {
                type = PieceType.Normal;
                // Single characters are the starting symbols; longer pieces only come from merges.
                score = scoreOf.TryGetValue(piece, out float s) ? s : IsSingleCharacter(piece) ? 0 : unreachable;
            }

            var entry = new ProtoWriter();
            entry.String(1, piece);
            entry.Float(2, score);
            entry.Varint(3, (ulong)type);
            model.Message(1, entry);
        }

        var trainer = new ProtoWriter();
        trainer.Varint(3, 2); // model_type = BPE
        trainer.Varint(4, (ulong)pieces.Count); // vocab_size
        trainer.Bool(24, false); // treat_whitespace_as_suffix
        trainer.Bool(35, byteFallback);
        trainer.Varint(40, (ulong)unknownId);
        trainer.Varint(41, (ulong)bosId);
        trainer.Varint(42, (ulong)eosId);
        trainer.String(45, pieces[unknownId] ?? "<unk>");
        if (bosId < pieces.Count && pieces[bosId] is string bos)
            trainer.String(46, bos);
        if (eosId < pieces.Count && pieces[eosId] is string eos)
            trainer.String(47, eos);
        model.Message(2, trainer);

        // The caller normalizes (dummy prefix, ' ' -> '▁') itself, as the Hugging Face pipeline does per segment.
        var normalizer = new ProtoWriter();
        normalizer.String(1, "identity");
        normalizer.Bool(3, false); // add_dummy_prefix
        normalizer.Bool(4, false); // remove_extra_whitespaces
        normalizer.Bool(5, true); // escape_whitespaces
        model.Message(3, normalizer);

        return model.ToArray();
    }

    public static bool IsByteToken(string piece) =>
        piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
        && Uri.IsHexDigit(piece[3]) && Uri.IsHexDigit(piece[4]);

    private static bool IsSingleCharacter(string piece) =>
        piece.Length == 1 || (piece.Length == 2 && char.IsSurrogatePair(piece[0], piece[1]));

    /// <summary>The protobuf wire format, just the field kinds a ModelProto needs.</summary>
    private sealed class ProtoWriter
    {
        private readonly MemoryStream _buffer = new();

        public void Varint(int field, ulong value)
        {
            Key(field, 0);
            Raw(value);
        }

        public void Bool(int field, bool value) => Varint(field, value ? 1UL : 0UL);

        public void Float(int field, float value)
        {
            Key(field, 5);
            Span<byte> bytes = stackalloc byte[4];
            BitConverter.TryWriteBytes(bytes, value); // little-endian on every platform .NET runs this server on
            _buffer.Write(bytes);
        }

        public void String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));

        public void Message(int field, ProtoWriter message) => Bytes(field, message.ToArray());

        public byte[] ToArray() => _buffer.ToArray();

        private void Bytes(int field, byte[] value)
        {
            Key(field, 2);
            Raw((ulong)value.Length);
            _buffer.Write(value);
        }

        private void Key(int field, int wireType) => Raw(((ulong)field << 3) | (uint)wireType);

        private void Raw(ulong value)
        {
            while (value >= 0x80)
            {
                _buffer.WriteByte((byte)(value | 0x80));
                value >>= 7;
            }
            _buffer.WriteByte((byte)value);
        }
    }
}
