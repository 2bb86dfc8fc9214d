// An outside client of streamrec, written only against schemas/*.avsc and the Avro spec,
// with Apache Avro's own single-object encoder (BinaryMessageEncoder/Decoder). It shares no
// code with streamrec; Kafka transport is kcat's. Run from source (Java 11+):
//
//   java -cp "jars/*" ExternalClient.java encode schemas/user_event.avsc events.tsv out/
//       events.tsv: event_id, user_id, item_id, event_type, event_time_ms, value (tab-separated;
//       an empty value is null);
//       writes out/<line number>.avro, one single-object-encoded UserEvent each
//   java -cp "jars/*" ExternalClient.java decode schemas/recommendation.avsc recs.bin
//       recs.bin: kcat -f '%R%s' output (4-byte big-endian length, then the value);
//       prints each Recommendation as one JSON line
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.File;
import java.io.FileInputStream;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

public class ExternalClient {
  public static void main(String[] args) throws Exception {
    Schema schema = new Schema.Parser().parse(new File(args[1]));
    if (args[0].equals("encode")) {
      encode(schema, Path.of(args[2]), Path.of(args[3]));
    } else {
      decode(schema, new File(args[2]));
    }
  }

  static void encode(Schema schema, Path events, Path out) throws Exception {
    BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), schema);
    Schema eventType = schema.getField("event_type").schema();
    List<String> lines = Files.readAllLines(events);
    Files.createDirectories(out);
    for (int n = 0; n < lines.size(); n++) {
      String[] f = lines.get(n).split("\t", -1);
      GenericRecord event = new GenericData.Record(schema);
      event.put("event_id", f[0]);
      event.put("user_id", f[1]);
      event.put("item_id", f[2]);
      event.put("event_type", new GenericData.EnumSymbol(eventType, f[3]));
      event.put("value", f.length > 5 && !f[5].isEmpty() ? Double.valueOf(f[5]) : null);
      event.put("event_time", Long.parseLong(f[4]));
      event.put("context", null);
      ByteBuffer bytes = encoder.encode(event);
      byte[] array = new byte[bytes.remaining()];
      bytes.get(array);
      Files.write(out.resolve(n + ".avro"), array);
    }
  }

  static void decode(Schema schema, File framed) throws Exception {
    BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
    try (DataInputStream in = new DataInputStream(new FileInputStream(framed))) {
      while (true) {
        int length;
        try {
          length = in.readInt();
        } catch (EOFException end) {
          return;
        }
        byte[] value = new byte[length];
        in.readFully(value);
        System.out.println(decoder.decode(value)); // GenericData renders a record as JSON
      }
    }
  }
}
