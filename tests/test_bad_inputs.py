"""The corpus of broken inputs in tests/data/bad/CLASS/: each gets a one-line error naming the file, the line
(or item) and the field, exit status 2, and no output file; ``data stats`` on each gets a table of what is
valid or that same one-line error, never a traceback."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from rlhf.cli import main

BAD = Path(__file__).parent / "data" / "bad"

CASES = {  # file: (--kind, message after "FILE", extra options...)
    # basic: the first corpus
    "basic/malformed_json.jsonl": ("comparisons", r":2: malformed JSON"),
    "basic/missing_rejected.jsonl": ("comparisons", r":2: missing field 'rejected'"),
    "basic/empty_chosen.jsonl": ("comparisons", r":2: field 'chosen' is empty"),
    "basic/empty_prompt.jsonl": ("comparisons", r":2: field 'prompt' is empty"),
    "basic/prompt_not_string.jsonl": ("comparisons", r":2: field 'prompt' must be a string, got integer"),
    "basic/one_response.jsonl": ("comparisons", r":2: field 'responses' needs at least 2 responses"),
    "basic/rank_string.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be an integer, got '1'"),
    "basic/rank_float.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be an integer, got 1\.5"),
    "basic/rank_zero.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be ≥ 1"),
    "basic/all_ties.jsonl": ("comparisons", r":2: field 'responses' has all ranks equal"),
    "basic/response_not_object.jsonl": ("comparisons", r":2: field 'responses\[0\]' must be an object"),
    "basic/response_missing_text.jsonl": ("comparisons", r":2: missing field 'responses\[0\]\.text'"),
    "basic/array_line.jsonl": ("comparisons", r":2: expected a JSON object, got array"),
    "basic/unknown_shape.jsonl": ("comparisons", r":2: not a comparison"),
    "basic/hh_no_assistant.jsonl": ("comparisons", r":2: field 'chosen' has no '\\n\\nAssistant:' turn"),
    "basic/hh_mismatch.jsonl": ("comparisons", r":2: fields 'chosen' and 'rejected' do not share the dialogue"),
    "basic/hh_empty_reply.jsonl": ("comparisons", r":2: field 'chosen' has an empty last Assistant reply"),
    "basic/bad_message.jsonl": ("comparisons", r":2: field 'prompt\[0\]' must be an object with 'role' and 'content'"),
    "basic/non_utf8.jsonl": ("comparisons", r":2: not valid UTF-8"),
    "basic/fake_gzip.jsonl.gz": ("comparisons", r": unreadable: named \.gz but not gzip-compressed"),
    "basic/demo_missing_response.jsonl": ("demonstrations", r":2: missing field 'response'"),
    "basic/demo_messages_no_assistant.jsonl": ("demonstrations",
                                               r":2: field 'messages' must end with an assistant turn"),
    "basic/alpaca_missing_output.jsonl": ("demonstrations", r":2: missing field 'output'"),
    "basic/selfinstruct_empty_instances.jsonl": ("demonstrations", r":2: field 'instances' is empty"),
    "basic/empty_response.jsonl": ("demonstrations", r":2: field 'response' is empty"),
    "basic/empty_file.jsonl": ("demonstrations", r": no usable records"),
    "basic/missing_columns.csv": ("comparisons", r":2: missing field 'chosen'"),
    "basic/ragged.csv": ("comparisons", r":3: 4 cells, header has 3"),
    "basic/non_utf8.csv": ("demonstrations", r":3: field 'prompt' is not valid UTF-8"),
    "basic/empty_cell.tsv": ("demonstrations", r":3: field 'response' is empty"),
    "basic/no_header.csv": ("demonstrations", r": no header row"),
    "basic/not_array.json": ("comparisons", r": expected a JSON array of records"),
    "basic/item_not_object.json": ("comparisons", r":item 1: expected a JSON object, got string"),
    "basic/malformed.json": ("comparisons", r":2: malformed JSON"),
    "basic/unknown_extension.xml": ("comparisons", r": cannot tell the format from the name"),
    # kind: a file holds one kind of record, decided from every row; what a JSON file may hold
    "kind/pairs_then_demo.jsonl": (
        "auto", r":2: a demonstration record, but \S+:1 holds a comparison: a file holds one kind"),
    "kind/pairs_then_messages.jsonl": (
        "auto", r":2: a demonstration record, but \S+:1 holds a comparison: a file holds one kind"),
    "kind/pairs_then_alpaca.jsonl": (
        "auto", r":2: a demonstration record, but \S+:1 holds a comparison: a file holds one kind"),
    "kind/pairs_then_prompt.jsonl": (
        "auto", r":2: a prompt record, but \S+:1 holds a comparison: a file holds one kind"),
    "kind/kway_then_demo.jsonl": (
        "auto", r":2: a demonstration record, but \S+:1 holds a comparison: a file holds one kind"),
    "kind/hh_then_selfinstruct.jsonl": (
        "auto", r":2: a demonstration record, but \S+:1 holds a comparison: a file holds one kind"),
    "kind/demo_then_pair.jsonl": (
        "auto", r":2: a comparison record, but \S+:1 holds a demonstration: a file holds one kind"),
    "kind/demo_then_kway.jsonl": (
        "auto", r":2: a comparison record, but \S+:1 holds a demonstration: a file holds one kind"),
    "kind/demo_then_hh.jsonl": (
        "auto", r":2: a comparison record, but \S+:1 holds a demonstration: a file holds one kind"),
    "kind/demo_then_prompt.jsonl": (
        "auto", r":2: a prompt record, but \S+:1 holds a demonstration: a file holds one kind"),
    "kind/prompt_then_pair.jsonl": (
        "auto", r":2: a comparison record, but \S+:1 holds a prompt: a file holds one kind"),
    "kind/prompt_then_demo.jsonl": (
        "auto", r":2: a demonstration record, but \S+:1 holds a prompt: a file holds one kind"),
    "kind/alpaca_then_prompt.jsonl": (
        "auto", r":2: a prompt record, but \S+:1 holds a demonstration: a file holds one kind"),
    "kind/mixed_late.jsonl": ("auto", r":5: a demonstration record, but \S+:1 holds a comparison"),
    "kind/first_row_incomplete.jsonl": ("auto", r":3: a comparison record, but \S+:2 holds a demonstration"),
    "kind/mixed.json": ("auto", r":item 1: a demonstration record, but \S+:item 0 holds a comparison"),
    "kind/mixed.csv": ("auto", r":3: field 'chosen' is empty"),  # CSV columns of two kinds: every row fills them
    "kind/mixed.tsv": ("auto", r":2: field 'chosen' is empty"),
    "kind/unknown_shape.jsonl": ("auto", r":1: not a demonstration: expected"),
    "kind/null_line.jsonl": ("auto", r":2: expected a JSON object, got null"),
    "kind/number_line.jsonl": ("auto", r":2: expected a JSON object, got integer"),
    "kind/string_line.jsonl": ("auto", r":2: expected a JSON object, got string"),
    "kind/single_pair.json": (
        "auto",
        r": expected a JSON array of records, got one object with the fields of a record \(prompt, chosen, rejected\)"),
    "kind/single_alpaca.json": ("auto", r"got one object with the fields of a record \(instruction, output\)"),
    "kind/single_kway.json": ("auto", r"got one object with the fields of a record \(prompt, responses\)"),
    "kind/record_beside_data.json": ("auto", r"got one object with the fields of a record \(prompt\)"),
    "kind/pandas_columns.json": ("auto", r": expected a JSON array of records, got an object of columns \(prompt, "
                                         r"chosen, rejected\), as pandas writes with orient='columns'"),
    "kind/jsonl_named_json.json": ("auto", r":2: missing field 'rejected'"),
    "kind/two_arrays.json": ("auto", r"got an object with several arrays \(train, test\)"),
    "kind/unknown_container.json": ("auto", r"got an object with keys stuff"),
    "kind/container_not_array.json": ("auto", r"got an object with keys data"),
    "kind/empty_object.json": ("auto", r"got an object with keys \(none\)"),
    "kind/scalar.json": ("auto", r": expected a JSON array of records, got integer"),
    "kind/string.json": ("auto", r": expected a JSON array of records, got string"),
    "kind/null.json": ("auto", r": expected a JSON array of records, got null"),
    "kind/empty_array.json": ("auto", r": no usable records"),
    "kind/empty.json": ("auto", r": no usable records"),
    "kind/empty_data.json": ("auto", r": no usable records"),
    "kind/nested_arrays.json": ("auto", r":item 0: expected a JSON object, got array"),
    "kind/only_blank_lines.jsonl": ("auto", r": no usable records"),
    # csv: CSV by RFC 4180 with physical line numbers, TSV without quoting, headers, field maps
    "csv/u2028_in_cell.csv": ("comparisons", r":3: 2 cells, header has 3"),
    "csv/u2028_in_quoted_cell.csv": ("comparisons", r":3: 2 cells, header has 3"),
    "csv/nel_in_cell.csv": ("comparisons", r":3: field 'rejected' is empty"),
    "csv/form_feed_in_cell.csv": ("comparisons", r":3: field 'rejected' is empty"),
    "csv/quoted_newlines_then_empty.csv": ("comparisons", r":5: field 'chosen' is empty"),
    "csv/quoted_crlf_then_ragged.csv": ("comparisons", r":4: 4 cells, header has 3"),
    "csv/cr_line_endings.csv": ("comparisons", r":3: 2 cells, header has 3"),
    "csv/unclosed_quote.csv": ("comparisons", r":3: malformed CSV \(a quote opened in this row is never closed\)"),
    "csv/quote_swallows_rows.csv": (
        "comparisons", r":2: 4 cells, header has 3 \(a quoted cell runs from line 2 to 4: is a quote unbalanced\?\)"),
    "csv/text_after_quote.csv": ("comparisons", r":2: malformed CSV \(',' expected after "),
    "csv/duplicate_column.csv": ("comparisons", r":1: column 'chosen' appears 2 times in the header"),
    "csv/duplicate_column_spaces.csv": ("comparisons", r":1: column 'chosen' appears 2 times"),
    "csv/duplicate_column_bom.csv": ("comparisons", r":1: column 'prompt' appears 2 times"),
    "csv/duplicate_column_with_newline.csv": ("comparisons", r":1: column 'prompt\\nname' appears 2 times"),
    "csv/duplicate_column.tsv": ("demonstrations", r":1: column 'response' appears 2 times"),
    "csv/semicolons.csv": (
        "comparisons", r":1: the header is one column, 'prompt;chosen;rejected': are the columns separated by ';'\?"),
    "csv/commas.tsv": (
        "demonstrations", r":1: the header is one column, 'prompt,response': are the columns separated by ','\?"),
    "csv/tabs.csv": ("demonstrations", r"are the columns separated by '\\t'\?"),
    "csv/header_only.csv": ("comparisons", r": no usable records"),
    "csv/blank_lines_only.csv": ("comparisons", r": no header row"),
    "csv/ragged_short.csv": ("comparisons", r":3: 2 cells, header has 3"),
    "csv/ragged_after_blank_lines.csv": ("comparisons", r":5: 4 cells, header has 3"),
    "csv/tsv_quote_is_text.tsv": ("demonstrations", r":3: 1 cells, header has 2"),
    "csv/tsv_unbalanced_quote.tsv": ("demonstrations", r":3: field 'response' is empty"),
    "csv/tsv_ragged.tsv": ("demonstrations", r":2: 3 cells, header has 2"),
    "csv/tsv_empty_cell_crlf.tsv": ("demonstrations", r":3: field 'response' is empty"),
    "csv/non_utf8_after_quoted_newline.csv": ("comparisons", r":4: field 'chosen' is not valid UTF-8"),
    "csv/non_utf8_header.csv": ("comparisons", r":1: the header is not valid UTF-8"),
    "csv/non_utf8.tsv": ("demonstrations", r":3: field 'response' is not valid UTF-8"),
    "csv/utf16.csv": ("demonstrations", r": UTF-16 text \(it starts with a byte-order mark\); save it as UTF-8"),
    "csv/utf16.tsv": ("demonstrations", r": UTF-16 text"),
    "csv/messages_cell_broken_json.csv": (
        "demonstrations", r":2: field 'messages' must be an array of \{role, content\} objects, got string"),
    "csv/responses_cell_broken_json.csv": (
        "comparisons", r":2: field 'responses' must be an array of \{text, rank\} objects, got string"),
    "csv/responses_cell_strings.csv": (
        "comparisons", r":2: field 'responses' must be an array of \{text, rank\} objects, got string"),
    "csv/metadata_cell_not_json.csv": ("demonstrations", r":2: field 'metadata' must be an object, got string"),
    "csv/big_cell_then_empty.csv.gz": ("comparisons", r":3: field 'chosen' is empty"),
    "csv/unmapped_column.csv": (
        "comparisons",
        r":2: missing field 'answer' \(mapped to 'prompt'\)",
        "--prompt-field", "answer", "--chosen-field", "good", "--rejected-field", "bad"),
    "csv/swapped_then_empty.csv": (
        "comparisons", r":3: field 'chosen' is empty", "--chosen-field", "rejected", "--rejected-field", "chosen"),
    "csv/surrogate_in_json_cell.csv": ("demonstrations", r":2: field 'messages\[0\]\.content' holds a lone surrogate"),
    # types: values of the wrong type, or that Python cannot hold (surrogates, depth, digits)
    "types/alpaca_input_number.jsonl": ("demonstrations", r":2: field 'input' must be a string, got integer"),
    "types/alpaca_input_list.jsonl": ("demonstrations", r":2: field 'input' must be a string, got array"),
    "types/alpaca_input_object.jsonl": ("demonstrations", r":2: field 'input' must be a string, got object"),
    "types/alpaca_input_bool.jsonl": ("demonstrations", r":2: field 'input' must be a string, got boolean"),
    "types/alpaca_instruction_null.jsonl": ("demonstrations", r":2: field 'instruction' must be a string, got null"),
    "types/alpaca_output_number.jsonl": ("demonstrations", r":2: field 'output' must be a string, got integer"),
    "types/instances_string.jsonl": (
        "demonstrations", r":2: field 'instances' must be an array of \{input, output\} objects, got string"),
    "types/instances_null.jsonl": ("demonstrations", r":2: field 'instances' must be an array .*, got null"),
    "types/instances_object.jsonl": ("demonstrations", r":2: field 'instances' must be an array .*, got object"),
    "types/instance_string.jsonl": (
        "demonstrations", r":2: field 'instances\[0\]' must be an object with 'input' and 'output', got string"),
    "types/instance_null.jsonl": ("demonstrations", r":2: field 'instances\[1\]' must be an object .*, got null"),
    "types/instance_input_number.jsonl": (
        "demonstrations", r":2: field 'instances\[0\]\.input' must be a string, got integer"),
    "types/instance_output_list.jsonl": (
        "demonstrations", r":2: field 'instances\[0\]\.output' must be a string, got array"),
    "types/instance_missing_output.jsonl": ("demonstrations", r":2: missing field 'instances\[0\]\.output'"),
    "types/user_id_list.jsonl": ("comparisons", r":2: field 'user_id' must be a string or an integer, got array"),
    "types/user_id_object.jsonl": ("comparisons", r":2: field 'user_id' must be a string or an integer, got object"),
    "types/user_id_bool.jsonl": ("demonstrations", r":2: field 'user_id' must be a string or an integer, got boolean"),
    "types/user_id_fraction.jsonl": ("prompts", r":2: field 'user_id' must be a string or an integer, got 7\.5"),
    "types/user_id_infinity.jsonl": ("prompts", r":2: field 'user_id' must be a string or an integer, got inf"),
    "types/user_id_list_hh.jsonl": ("comparisons", r":2: field 'user_id' must be a string or an integer, got array"),
    "types/category_list.jsonl": ("prompts", r":2: field 'category' must be a string or an integer, got array"),
    "types/prompt_object.jsonl": ("comparisons", r":2: field 'prompt' must be a string, got object"),
    "types/prompt_null.jsonl": ("prompts", r":2: field 'prompt' must be a string, got null"),
    "types/chosen_number.jsonl": ("comparisons", r":2: field 'chosen' must be a string, got integer"),
    "types/response_list.jsonl": ("demonstrations", r":2: field 'response' must be a string, got array"),
    "types/completion_null.jsonl": ("demonstrations", r":2: field 'completion' must be a string, got null"),
    "types/messages_string.jsonl": (
        "demonstrations", r":2: field 'messages' must be an array of \{role, content\} objects, got string"),
    "types/message_content_parts.jsonl": (
        "demonstrations", r":2: field 'messages\[0\]\.content' must be a string, got array"),
    "types/message_role_null.jsonl": (
        "comparisons", r":2: field 'prompt\[0\]\.role' must be one of system, user, assistant; got None"),
    "types/message_not_object.jsonl": (
        "comparisons", r":2: field 'prompt\[0\]' must be an object with 'role' and 'content'"),
    "types/metadata_string.jsonl": ("demonstrations", r":2: field 'metadata' must be an object, got string"),
    "types/metadata_list.jsonl": ("comparisons", r":2: field 'metadata' must be an object, got array"),
    "types/responses_object.jsonl": (
        "comparisons", r":2: field 'responses' must be an array of \{text, rank\} objects, got object"),
    "types/responses_null.jsonl": ("comparisons", r":2: field 'responses' must be an array .*, got null"),
    "types/response_text_number.jsonl": (
        "comparisons", r":2: field 'responses\[0\]\.text' must be a string, got integer"),
    "types/rank_missing.jsonl": ("comparisons", r":2: missing field 'responses\[0\]\.rank'"),
    "types/rank_null.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be an integer, got None"),
    "types/rank_bool.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be an integer, got True"),
    "types/rank_nan.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be an integer, got nan"),
    "types/rank_list.jsonl": ("comparisons", r":2: field 'responses\[0\]\.ranking' must be an integer, got \[1\]"),
    "types/rank_negative.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be ≥ 1"),
    "types/rank_too_large.jsonl": ("comparisons",
                                   r":2: field 'responses\[0\]\.rank' must be ≥ 1 \(1 = best\) and ≤ 2147483647"),
    "types/duplicate_key_with_newline.jsonl": ("comparisons", r":2: field 'note\\nx' appears twice in one object$"),
    "types/duplicate_key.jsonl": ("comparisons", r":2: field 'chosen' appears twice in one object"),
    "types/duplicate_key_nested.jsonl": ("comparisons", r":2: field 'rank' appears twice"),
    "types/surrogate_prompt.jsonl": ("comparisons", r":2: field 'prompt' holds a lone surrogate, which is not text"),
    "types/surrogate_low.jsonl": ("demonstrations", r":2: field 'response' holds a lone surrogate"),
    "types/surrogate_response_text.jsonl": ("comparisons", r":2: field 'responses\[1\]\.text' holds a lone surrogate"),
    "types/surrogate_message.jsonl": ("demonstrations", r":2: field 'messages\[0\]\.content' holds a lone surrogate"),
    "types/surrogate_metadata.jsonl": ("demonstrations", r":2: field 'metadata\.note' holds a lone surrogate"),
    "types/surrogate_key.jsonl": ("demonstrations", r":2: field 'x\\ud800' holds a lone surrogate"),
    "types/surrogate_user_id.jsonl": ("prompts", r":2: field 'user_id' holds a lone surrogate"),
    "types/surrogate_ignored_field.jsonl": ("prompts", r":2: field 'extra\[0\]' holds a lone surrogate"),
    # 5,000 levels: Python 3.11's json stops at the recursion limit, 3.12's reads them (found on a GPU machine's
    # 3.12) and the record's own check names what is wrong; either way one located line
    "types/deep_array.jsonl": ("comparisons",
                               r":2: (JSON nested too deeply to read|expected a JSON object, got array)"),
    "types/deep_object.jsonl": ("comparisons",
                                r":2: (JSON nested too deeply to read|field 'prompt' must be a string, got object)"),
    "types/big_integer_rank.jsonl": ("comparisons", r":2: a JSON number longer than 4300 digits"),
    "types/big_integer_user_id.jsonl": ("demonstrations", r":2: a JSON number longer than \d+ digits"),
    "types/surrogate.json": ("comparisons", r":item 1: field 'rejected' holds a lone surrogate"),
    "types/deep.json": ("comparisons",
                        r"(: JSON nested too deeply to read|:item 0: expected a JSON object, got array)"),
    "types/big_integer.json": ("comparisons", r": a JSON number longer than 4300 digits"),
    "types/duplicate_key.json": ("comparisons", r": field 'prompt' appears twice"),
    # encoding: compression by magic bytes, truncated and corrupt gzip, other encodings
    "encoding/upper_case.JSONL.GZ": ("comparisons", r":2: missing field 'rejected'"),
    "encoding/upper_case.jsonl.Gz": ("comparisons", r":2: missing field 'rejected'"),
    "encoding/gzip_without_gz_name.jsonl": ("comparisons", r":2: missing field 'rejected'"),
    "encoding/gzip.csv.GZ": ("comparisons", r":3: fields 'chosen' and 'rejected' are the same response"),
    "encoding/gzip.json.gz": ("comparisons", r":item 1: expected a JSON object, got integer"),
    "encoding/truncated.jsonl.gz": ("comparisons", r": unreadable after line \d+ \(Compressed file ended"),
    "encoding/corrupt.jsonl.gz": ("comparisons", r": unreadable after line \d+"),
    "encoding/bad_crc.jsonl.gz": ("comparisons", r": unreadable after line 1 \(CRC check failed"),
    "encoding/non_utf8.jsonl.gz": ("comparisons", r":2: not valid UTF-8"),
    "encoding/utf16.jsonl": ("comparisons", r": UTF-16 text \(it starts with a byte-order mark\)"),
    "encoding/utf16be.json": ("comparisons", r": UTF-16 text"),
    "encoding/zip_named.jsonl": ("comparisons", r": a zip archive; unzip it first"),
    "encoding/bzip2_named.jsonl": ("comparisons", r": bzip2-compressed"),
    "encoding/xz_named.jsonl": ("comparisons", r": xz-compressed"),
    "encoding/zstd_named.jsonl": ("comparisons", r": zstd-compressed"),
    "encoding/parquet_named.jsonl": ("comparisons", r": a Parquet file; name it \.parquet or pass --format parquet"),
    "encoding/bom_then_missing.jsonl": ("comparisons", r":2: missing field 'rejected'"),
    "encoding/bom.json": ("comparisons", r":item 1: missing field 'chosen'"),
    "encoding/raw_control_char.jsonl": ("comparisons", r":2: malformed JSON \(Invalid control character"),
    "encoding/latin1.json": ("comparisons", r":1: not valid UTF-8"),
    # meaning: well-formed records that cannot be trained on
    "meaning/chosen_equals_rejected.jsonl": (
        "comparisons", r":2: fields 'chosen' and 'rejected' are the same response"),
    "meaning/chosen_equals_rejected_spaces.jsonl": (
        "comparisons", r":2: fields 'chosen' and 'rejected' are the same response"),
    "meaning/hh_same_reply.jsonl": ("comparisons", r":2: fields 'chosen' and 'rejected' are the same response"),
    "meaning/kway_same_text_other_rank.jsonl": (
        "comparisons",
        r":2: fields 'responses\[0\]' and 'responses\[2\]' are the same text with different ranks \(1 and 3\)"),
    "meaning/kway_same_text_ranking.jsonl": (
        "comparisons", r":2: fields 'responses\[0\]' and 'responses\[1\]' are the same text with different ranks"),
    "meaning/rank_and_ranking_disagree.jsonl": (
        "comparisons", r":2: fields 'responses\[0\]\.rank' and 'responses\[0\]\.ranking' disagree \(1 and 2\)"),
    "meaning/rank_and_ranking_types.jsonl": (
        "comparisons", r":2: fields 'responses\[0\]\.rank' and 'responses\[0\]\.ranking' disagree \(1 and '1'\)"),
    "meaning/all_ties_three.jsonl": ("comparisons", r":2: field 'responses' has all ranks equal"),
    "meaning/role_human.jsonl": (
        "comparisons", r":2: field 'prompt\[0\]\.role' must be one of system, user, assistant; got 'human'"),
    "meaning/role_bot.jsonl": (
        "demonstrations", r":2: field 'messages\[1\]\.role' must be one of system, user, assistant; got 'bot'"),
    "meaning/role_capitalised.jsonl": ("prompts", r":2: field 'prompt\[0\]\.role' must be one of .*; got 'User'"),
    "meaning/role_tool.jsonl": ("demonstrations", r":2: field 'messages\[1\]\.role' must be one of"),
    "meaning/sharegpt_from_value.jsonl": (
        "demonstrations", r":2: field 'messages\[0\]' must be an object with 'role' and 'content'"),
    "meaning/system_not_first.jsonl": (
        "comparisons", r":2: field 'prompt\[1\]\.role': a system turn may only come first"),
    "meaning/prompt_ends_with_assistant.jsonl": ("comparisons", r":2: field 'prompt' must end with a user turn"),
    "meaning/prompt_system_only.jsonl": ("prompts", r":2: field 'prompt' has no user turn"),
    "meaning/prompt_assistant_only.jsonl": ("demonstrations", r":2: field 'prompt' has no user turn"),
    "meaning/kway_prompt_ends_with_assistant.jsonl": ("comparisons", r":2: field 'prompt' must end with a user turn"),
    "meaning/messages_without_user.jsonl": (
        "demonstrations", r":2: field 'messages' must have a user turn just before the last assistant turn"),
    "meaning/messages_two_assistant_turns.jsonl": (
        "demonstrations", r":2: field 'messages' must have a user turn just before the last assistant turn"),
    "meaning/messages_ends_with_user.jsonl": (
        "demonstrations", r":2: field 'messages' must end with an assistant turn"),
    "meaning/zero_width_space_prompt.jsonl": ("comparisons", r":2: field 'prompt' is empty"),
    "meaning/zero_width_non_joiner.jsonl": ("demonstrations", r":2: field 'response' is empty"),
    "meaning/zero_width_joiner.jsonl": ("comparisons", r":2: field 'chosen' is empty"),
    "meaning/word_joiner.jsonl": ("comparisons", r":2: field 'rejected' is empty"),
    "meaning/byte_order_mark_text.jsonl": ("prompts", r":2: field 'prompt' is empty"),
    "meaning/control_chars.jsonl": ("demonstrations", r":2: field 'response' is empty"),
    "meaning/c1_control_chars.jsonl": ("demonstrations", r":2: field 'response' is empty"),
    "meaning/unicode_spaces.jsonl": ("comparisons", r":2: field 'chosen' is empty"),
    "meaning/line_separators.jsonl": ("comparisons", r":2: field 'chosen' is empty"),
    "meaning/hangul_filler.jsonl": ("demonstrations", r":2: field 'response' is empty"),
    "meaning/soft_hyphen_and_bidi.jsonl": ("demonstrations", r":2: field 'response' is empty"),
    "meaning/invisible_raw_utf8.jsonl": ("comparisons", r":2: field 'rejected' is empty"),
    "meaning/invisible_message_content.jsonl": ("comparisons", r":2: field 'prompt\[1\]\.content' is empty"),
    "meaning/invisible_response_text.jsonl": ("comparisons", r":2: field 'responses\[1\]\.text' is empty"),
    "meaning/invisible_alpaca_output.jsonl": ("demonstrations", r":2: field 'output' is empty"),
    "meaning/invisible_instance_output.jsonl": ("demonstrations", r":2: field 'instances\[0\]\.output' is empty"),
    "meaning/hh_text_before_first_human.jsonl": (
        "comparisons", r":2: field 'chosen' must start with a 'Human:' turn, not 'Conversation 12"),
    "meaning/hh_starts_with_assistant.jsonl": ("comparisons", r":2: field 'chosen' must start with a 'Human:' turn"),
    "meaning/hh_trailing_human.jsonl": (
        "comparisons", r":2: field 'chosen' ends with a Human turn; the last turn must be the Assistant's reply"),
    "meaning/hh_trailing_human_demo.jsonl": ("demonstrations", r":2: field 'chosen' ends with a Human turn"),
    "meaning/hh_trailing_human_prompt.jsonl": ("prompts", r":2: field 'chosen' ends with a Human turn"),
    "meaning/hh_two_assistant_replies.jsonl": (
        "comparisons", r":2: field 'chosen' does not end with a Human turn before the last reply"),
    "meaning/hh_empty_human_turn.jsonl": ("comparisons", r":2: field 'chosen' has an empty Human turn \(turn 1\)"),
    "meaning/hh_invisible_reply.jsonl": ("comparisons", r":2: field 'chosen' has an empty last Assistant reply"),
    "meaning/hh_without_blank_line_is_fine.jsonl": ("comparisons", r":2: missing field 'rejected'"),
    "meaning/hh_windows_line_ends_then_missing.jsonl": ("comparisons", r":2: missing field 'rejected'"),
    "meaning/hh_rejected_only.jsonl": ("comparisons", r":2: missing field 'chosen'"),
    # found by a hostile tester after the corpus was written
    "types/metadata_nan.jsonl": ("comparisons", r":2: field 'metadata\.score' is NaN or infinite, which JSON cannot"),
    "types/metadata_infinity.jsonl": ("comparisons", r":2: field 'metadata\.scores\[1\]' is NaN or infinite"),
    "kind/key_with_spaces.jsonl": ("demonstrations", r":2: not a demonstration: .*; found ' prompt', 'response'"),
    "csv/stray_quote.csv": ("comparisons", r":3: malformed CSV \(',' expected after '\"'\)"),
}


def test_the_corpus_is_complete():
    files = sorted(str(path.relative_to(BAD)) for path in BAD.rglob("*") if path.is_file())
    assert sorted(CASES) == files
    assert len(files) >= 150
    assert {name.split("/")[0] for name in files} == {"basic", "kind", "csv", "types", "encoding", "meaning"}


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_broken_input_gets_a_located_one_line_error(name, capsys, tmp_path):
    kind, message, *options = CASES[name]
    output = tmp_path / "out.jsonl"
    code, error, _ = run_cli(capsys, "data", "convert", BAD / name, "--output", output, "--kind", kind, *options)
    assert code == 2
    assert len(error.splitlines()) == 1, error
    assert error.startswith(f"rlhf: error: {BAD / name}")
    assert re.search(message, error), error
    assert "bug in rlhf" not in error  # a DataError, not the last-resort handler
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file


@pytest.mark.parametrize("name", sorted(CASES))
def test_stats_diagnoses_each_broken_input_without_a_traceback(name, capsys):
    kind, _, *options = CASES[name]
    code, error, out = run_cli(capsys, "data", "stats", BAD / name, "--kind", kind, "--no-pii", *options)
    if code == 0:  # some records are valid: the table counts the invalid ones by problem
        assert "invalid records" in out and not error
    else:
        assert code == 2 and len(error.splitlines()) == 1 and error.startswith(f"rlhf: error: {BAD / name}")
        assert "bug in rlhf" not in error


def convert(capsys, tmp_path, path, *options):
    output = tmp_path / "out" / "converted.jsonl"
    code, error, _ = run_cli(capsys, "data", "convert", path, "--output", output, *options)
    return code, error, output


def test_missing_file_and_unmapped_column(capsys, tmp_path):
    code, error, _ = convert(capsys, tmp_path, tmp_path / "nope.jsonl")
    assert code == 2 and error.endswith("nope.jsonl: file does not exist")
    code, error, _ = convert(capsys, tmp_path, BAD / "basic/missing_columns.csv", "--kind", "demonstrations",
                             "--prompt-field", "question")
    assert code == 2 and ":2: missing field 'question' (mapped to 'prompt')" in error


def test_parquet_without_the_needed_columns(capsys, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "chosen": ["x", "y"]}), path)
    code, error, output = convert(capsys, tmp_path, path, "--kind", "comparisons")
    assert code == 2 and f"{path}:row 1: missing field 'rejected'" in error
    assert not output.exists()
    mixed = tmp_path / "mixed.parquet"  # the columns of two kinds, each row null in the other kind's
    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["x", None], "chosen": [None, "y"],
                             "rejected": [None, "z"]}), mixed)
    code, error, _ = convert(capsys, tmp_path, mixed)
    assert code == 2 and error.endswith(f"{mixed}:row 2: a comparison record, but {mixed}:row 1 holds a "
                                        "demonstration: a file holds one kind of record (or pass --kind to read "
                                        "every row as one kind)")


def test_one_column_mapped_to_two_fields(capsys, tmp_path):
    code, error, _ = convert(capsys, tmp_path, BAD / "csv/swapped_then_empty.csv", "--chosen-field", "prompt",
                             "--rejected-field", "prompt")
    assert code == 2 and error == "rlhf: error: fields 'chosen' and 'rejected' are both mapped from column 'prompt'"


def test_a_file_without_read_permission(capsys, tmp_path, monkeypatch):
    import os

    from rlhf.data import formats

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    if os.geteuid() != 0:  # root reads anything: there, only the stand-in below can test it
        path.chmod(0)
        code, error, output = convert(capsys, tmp_path, path)
        assert code == 2 and error == f"rlhf: error: {path}: cannot read the file (Permission denied)"
        path.chmod(0o644)

    def refuse(name, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(name))

    monkeypatch.setattr(formats, "open", refuse, raising=False)
    code, error, output = convert(capsys, tmp_path, path)
    assert code == 2 and error == f"rlhf: error: {path}: cannot read the file (Permission denied)"
    assert not output.exists()


def test_a_folder_read_as_jsonl(capsys, tmp_path):
    folder = tmp_path / "pairs.jsonl"
    folder.mkdir()
    code, error, _ = convert(capsys, tmp_path, folder, "--format", "jsonl")
    assert code == 2 and error == f"rlhf: error: {folder}: cannot read the file (Is a directory)"


def test_a_csv_cell_over_the_field_limit(capsys, tmp_path, monkeypatch):
    import csv

    from rlhf.data import formats

    limit = csv.field_size_limit()
    monkeypatch.setattr(formats, "CSV_FIELD_LIMIT", 1000)
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\na,b,c\nd," + "e" * 1001 + ",f\n")
    code, error, _ = convert(capsys, tmp_path, path)
    assert code == 2 and error.endswith(f"{path}:3: malformed CSV (a cell longer than 1000 characters)")
    assert csv.field_size_limit() == limit  # the module's limit is put back


MIXED = (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
         b'{"prompt": "a", "chosen": \n'  # malformed JSON
         b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n'  # not UTF-8
         b'[1, 2]\n'  # not an object
         b'{"prompt": "d", "chosen": "e", "rejected": "e"}\n'  # the same response twice
         b'{"prompt": "f", "response": "g"}\n'  # another kind
         b'{"prompt": "h", "chosen": "i", "rejected": ""}\n'
         b'{"prompt": "j", "chosen": "k", "rejected": "\xe2\x80\x8b"}\n'  # U+200B only
         b'{"prompt": "l", "chosen": "m", "rejected": "n"}\n')


def test_skip_invalid_skips_malformed_lines_too_and_counts_them(capsys, tmp_path, caplog):
    caplog.set_level("DEBUG", logger="rlhf.data.readers")
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(MIXED)
    code, error, output = convert(capsys, tmp_path, path, "--skip-invalid")
    assert code == 0 and len(output.read_text().splitlines()) == 2
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"{path}: skipped 7 invalid record(s): 2 × field 'rejected' is empty (:7, :8); ")
    for problem in ("malformed JSON", "not valid UTF-8", "expected a JSON object, got array",
                    "fields 'chosen' and 'rejected' are the same response"):
        assert problem in warning
    assert warning.endswith("; 1 more with 1 other problem (-v lists each)")  # the five most frequent are shown
    assert f"skipping {path}:6: a demonstration record, but {path}:1 holds a comparison" in caplog.text


def test_stats_counts_invalid_records_by_problem_and_tables_the_rest(capsys, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(MIXED)
    code, error, out = run_cli(capsys, "data", "stats", path, "--no-pii")
    assert code == 0 and not error
    assert re.search(r"records +│ 2 ", out) and re.search(r"invalid records .*│ 7 ", out)
    assert "2 (first at :7, :8)" in out and "1 (first at :2)" in out
    many = tmp_path / "many.jsonl"
    many.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + '{"prompt": "a", "chosen": ""}\n' * 5)
    code, _, out = run_cli(capsys, "data", "stats", many, "--no-pii", "--kind", "comparisons")
    assert code == 0 and "5 (first at :2, :3, :4, ...)" in out


def test_stats_with_no_valid_record_is_an_error_that_says_why(capsys, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b"}\n{"prompt": "a", "chosen": ""}\n')
    code, error, out = run_cli(capsys, "data", "stats", path, "--no-pii", "--kind", "comparisons")
    assert code == 2 and re.search(r"invalid records .*│ 2 ", out)  # the table of problems, then the error
    assert error == (f"rlhf: error: {path}: no usable records (2 invalid: 1 × missing field 'rejected' (:1); "
                     "1 × field 'chosen' is empty (:2))")


def test_an_unexpected_error_while_reading_is_one_line_asking_for_a_bug_report(tmp_path, capsys, monkeypatch):
    """The last resort: an exception no reader expected names the file and line, exit 70, no traceback."""
    import rlhf.data.readers as readers

    def broken(obj, where):
        raise KeyError("a reader bug")

    monkeypatch.setitem(readers.PARSERS, "comparisons", broken)
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    code = main(["data", "convert", str(path), "--kind", "comparisons", "--output", str(tmp_path / "out.jsonl")])
    error = capsys.readouterr().err.strip()
    assert code == 70 and len(error.splitlines()) == 1, error
    assert error.startswith(f"rlhf: error: {path}:1: could not be read (KeyError") and "bug in rlhf" in error
    assert not (tmp_path / "out.jsonl").exists()


def test_errors_outside_reading_are_not_dressed_as_read_errors(tmp_path, monkeypatch):
    import rlhf.data.stats as stats

    def broken_pipe(*args, **kwargs):
        raise BrokenPipeError  # `rlhf data stats FILE | head`

    monkeypatch.setattr(stats, "print_stats", broken_pipe)
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(BrokenPipeError):
        main(["data", "stats", str(path), "--no-pii"])


def test_a_stray_quote_spoils_only_its_own_row_with_skip_invalid(capsys, caplog, tmp_path):
    code, error, output = convert(capsys, tmp_path, BAD / "csv/stray_quote.csv", "--skip-invalid")
    assert code == 0 and "skipped 1 invalid record(s): 1 × malformed CSV" in caplog.text
    assert [json.loads(line)["prompt"] for line in output.read_text().splitlines()] == ["Name a colour."]


def test_a_pipe_is_refused_instead_of_read_forever(capsys, tmp_path):
    fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(fifo)
    code, error, _ = convert(capsys, tmp_path, fifo)  # would block in open() if it were tried
    assert code == 2 and error.endswith("pairs.jsonl: not a regular file (a pipe, socket or device); give a file")


def test_format_hub_needs_a_hub_name(capsys, tmp_path):
    code, error, _ = convert(capsys, tmp_path, BAD / "basic/malformed_json.jsonl", "--format", "hub")
    assert code == 2 and error.endswith("malformed_json.jsonl: a hub data set is named hf:NAME[:SPLIT]")


def test_a_hub_data_set_without_the_datasets_package_is_one_line(capsys, tmp_path, monkeypatch):
    """The name is checked before the import, and a missing ``datasets`` is a one-line error, not exit 70
    (found on a machine without the package)."""
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    code, error, _ = convert(capsys, tmp_path, BAD / "basic/malformed_json.jsonl", "--format", "hub")
    assert code == 2 and error.endswith("malformed_json.jsonl: a hub data set is named hf:NAME[:SPLIT]")
    code, error, _ = convert(capsys, tmp_path, "hf:someone/pairs", "--format", "hub")
    assert code == 2 and error.endswith(
        "hf:someone/pairs: reading a hub data set needs 'datasets' (pip install datasets)")
    assert not (tmp_path / "out").exists()


def test_a_mapped_column_may_not_hide_a_field_of_that_name(capsys, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("question,prompt,chosen,rejected\nq,p,a,b\n")
    code, error, _ = convert(capsys, tmp_path, path, "--prompt-field", "question")
    assert code == 2 and ":2: field 'prompt' is present and 'question' is mapped to it" in error


def test_parquet_timestamps_decimals_and_bytes_become_json_or_a_located_error(capsys, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import datetime
    import decimal

    import pyarrow as pa

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "chosen": ["a"], "rejected": ["b"], "blob": [b"\xff"],
                             "metadata": [{"when": datetime.datetime(2024, 1, 2, 3, 4), "d": decimal.Decimal("1.5"),
                                           "tag": b"utf-8 text"}]}), good)
    code, error, output = convert(capsys, tmp_path, good)
    assert code == 0, error  # an unused binary column is no obstacle
    assert json.loads(output.read_text())["metadata"] == {"when": "2024-01-02T03:04:00", "d": 1.5, "tag": "utf-8 text"}
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "chosen": ["a"], "rejected": ["b"], "metadata": [{"raw": b"\xff"}]}),
                   bad)
    code, error, _ = run_cli(capsys, "data", "convert", bad, "--output", tmp_path / "bad.jsonl")
    assert code == 2 and error.endswith("bad.parquet:row 1: field 'metadata.raw' holds bytes, which JSON cannot hold")


def test_the_kind_is_the_one_most_rows_show(capsys, tmp_path):
    """One stray prompt row before many pairs: with --skip-invalid the stray row goes, not the pairs."""
    path = tmp_path / "mostly_pairs.jsonl"
    rows = [{"prompt": "a lone prompt"}] + [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, error, _ = convert(capsys, tmp_path, path)
    assert code == 2 and ":1: a prompt record, but " in error and ":2 holds a comparison" in error
    code, error, output = convert(capsys, tmp_path, path, "--skip-invalid")
    assert code == 0 and len(output.read_text().splitlines()) == 5
