"""Word lists for the six K-EXAONE languages (ko, en, es, de, ja, vi).

Concepts are aligned by index across languages (food 0 is "apple" everywhere), so the corpus
carries the same world in six languages: verbs take objects of the right category (eat ->
food, read -> text), capitals belong to their countries, sums are correct. A tiny LM can learn
those regularities; that is the point of the shipped corpus.
"""

from __future__ import annotations

LANGUAGES = ("ko", "en", "es", "de", "ja", "vi")

NAMES = {
    "en": ["Emma", "Noah", "Olivia", "Liam", "Sophia", "Mason", "Ava", "Ethan", "Grace", "Henry"],
    "es": ["Lucía", "Mateo", "Sofía", "Diego", "Valeria", "Carlos", "Elena", "Javier", "Marta", "Pablo"],
    "de": ["Anna", "Lukas", "Greta", "Jonas", "Lena", "Felix", "Marie", "Paul", "Clara", "Hans"],
    "ja": ["ゆき", "はると", "さくら", "けんじ", "あおい", "りく", "はな", "そうた", "みお", "たくみ"],
    "ko": ["민수", "지수", "서연", "하준", "도윤", "예린", "준호", "수빈", "지호", "유나"],
    "vi": ["Linh", "Minh", "Lan", "Huy", "Mai", "Tuấn", "Thảo", "Nam", "Hoa", "Long"],
}

# Objects by category, in the form each language's sentence template needs
# (es: definite article; de: accusative article; ko/ja/vi: bare noun).
FOODS = {
    "en": ["the apple", "the bread", "the rice", "the soup", "the cake", "the noodles", "the fish", "the cheese", "the orange", "the egg"],
    "es": ["la manzana", "el pan", "el arroz", "la sopa", "el pastel", "los fideos", "el pescado", "el queso", "la naranja", "el huevo"],
    "de": ["den Apfel", "das Brot", "den Reis", "die Suppe", "den Kuchen", "die Nudeln", "den Fisch", "den Käse", "die Orange", "das Ei"],
    "ja": ["りんご", "パン", "ご飯", "スープ", "ケーキ", "麺", "魚", "チーズ", "オレンジ", "卵"],
    "ko": ["사과", "빵", "밥", "국", "케이크", "국수", "생선", "치즈", "오렌지", "달걀"],
    "vi": ["quả táo", "bánh mì", "cơm", "món súp", "bánh ngọt", "mì", "cá", "phô mai", "quả cam", "quả trứng"],
}
DRINKS = {
    "en": ["water", "tea", "coffee", "milk", "juice"],
    "es": ["agua", "té", "café", "leche", "zumo"],
    "de": ["Wasser", "Tee", "Kaffee", "Milch", "Saft"],
    "ja": ["水", "お茶", "コーヒー", "牛乳", "ジュース"],
    "ko": ["물", "차", "커피", "우유", "주스"],
    "vi": ["nước", "trà", "cà phê", "sữa", "nước ép"],
}
TEXTS = {
    "en": ["a book", "a letter", "the newspaper", "a novel", "a poem"],
    "es": ["un libro", "una carta", "el periódico", "una novela", "un poema"],
    "de": ["ein Buch", "einen Brief", "die Zeitung", "einen Roman", "ein Gedicht"],
    "ja": ["本", "手紙", "新聞", "小説", "詩"],
    "ko": ["책", "편지", "신문", "소설", "시"],
    "vi": ["cuốn sách", "lá thư", "tờ báo", "cuốn tiểu thuyết", "bài thơ"],
}
PLACES = {
    "en": ["in the park", "at school", "in the library", "at the market", "in the kitchen", "at the station", "in the garden", "at the museum", "on the beach", "at the office"],
    "es": ["en el parque", "en la escuela", "en la biblioteca", "en el mercado", "en la cocina", "en la estación", "en el jardín", "en el museo", "en la playa", "en la oficina"],
    "de": ["im Park", "in der Schule", "in der Bibliothek", "auf dem Markt", "in der Küche", "am Bahnhof", "im Garten", "im Museum", "am Strand", "im Büro"],
    "ja": ["公園", "学校", "図書館", "市場", "台所", "駅", "庭", "博物館", "海辺", "会社"],
    "ko": ["공원", "학교", "도서관", "시장", "부엌", "역", "정원", "박물관", "해변", "사무실"],
    "vi": ["ở công viên", "ở trường học", "ở thư viện", "ở chợ", "trong nhà bếp", "ở nhà ga", "trong khu vườn", "ở bảo tàng", "trên bãi biển", "ở văn phòng"],
}
TIMES = {
    "en": ["In the morning", "In the evening", "Yesterday", "Today", "On Sunday", "At night", "After lunch"],
    "es": ["Por la mañana", "Por la tarde", "Ayer", "Hoy", "El domingo", "Por la noche", "Después del almuerzo"],
    "de": ["Am Morgen", "Am Abend", "Gestern", "Heute", "Am Sonntag", "In der Nacht", "Nach dem Mittagessen"],
    "ja": ["朝", "夕方", "昨日", "今日", "日曜日に", "夜", "昼ご飯の後で"],
    "ko": ["아침에", "저녁에", "어제", "오늘", "일요일에", "밤에", "점심 후에"],
    "vi": ["Buổi sáng", "Buổi tối", "Hôm qua", "Hôm nay", "Chủ nhật", "Ban đêm", "Sau bữa trưa"],
}
ADJECTIVES = {  # describe a food
    "en": ["fresh", "warm", "sweet", "delicious", "cold", "salty"],
    "es": ["fresco", "caliente", "dulce", "delicioso", "frío", "salado"],
    "de": ["frisch", "warm", "süß", "lecker", "kalt", "salzig"],
    "ja": ["新鮮", "温か", "甘", "おいし", "冷た", "しょっぱ"],
    "ko": ["신선했습니다", "따뜻했습니다", "달았습니다", "맛있었습니다", "차가웠습니다", "짰습니다"],
    "vi": ["tươi", "ấm", "ngọt", "ngon", "lạnh", "mặn"],
}
# Past-tense verbs, keyed by the object category they take.
VERBS = {
    "eat": {"en": "ate", "es": "comió", "de": "aß", "ja": "食べました", "ko": "먹었습니다", "vi": "ăn"},
    "cook": {"en": "cooked", "es": "cocinó", "de": "kochte", "ja": "作りました", "ko": "만들었습니다", "vi": "nấu"},
    "buy": {"en": "bought", "es": "compró", "de": "kaufte", "ja": "買いました", "ko": "샀습니다", "vi": "mua"},
    "drink": {"en": "drank", "es": "bebió", "de": "trank", "ja": "飲みました", "ko": "마셨습니다", "vi": "uống"},
    "read": {"en": "read", "es": "leyó", "de": "las", "ja": "読みました", "ko": "읽었습니다", "vi": "đọc"},
    "write": {"en": "wrote", "es": "escribió", "de": "schrieb", "ja": "書きました", "ko": "썼습니다", "vi": "viết"},
}
VERB_OBJECTS = {"eat": FOODS, "cook": FOODS, "buy": FOODS, "drink": DRINKS, "read": TEXTS, "write": TEXTS}

COUNTRIES = {  # (country, capital)
    "en": [("Korea", "Seoul"), ("Japan", "Tokyo"), ("France", "Paris"), ("Germany", "Berlin"), ("Spain", "Madrid"), ("Vietnam", "Hanoi"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Peru", "Lima")],
    "es": [("Corea", "Seúl"), ("Japón", "Tokio"), ("Francia", "París"), ("Alemania", "Berlín"), ("España", "Madrid"), ("Vietnam", "Hanói"), ("Italia", "Roma"), ("Egipto", "El Cairo"), ("Canadá", "Ottawa"), ("Perú", "Lima")],
    "de": [("Korea", "Seoul"), ("Japan", "Tokio"), ("Frankreich", "Paris"), ("Deutschland", "Berlin"), ("Spanien", "Madrid"), ("Vietnam", "Hanoi"), ("Italien", "Rom"), ("Ägypten", "Kairo"), ("Kanada", "Ottawa"), ("Peru", "Lima")],
    "ja": [("韓国", "ソウル"), ("日本", "東京"), ("フランス", "パリ"), ("ドイツ", "ベルリン"), ("スペイン", "マドリード"), ("ベトナム", "ハノイ"), ("イタリア", "ローマ"), ("エジプト", "カイロ"), ("カナダ", "オタワ"), ("ペルー", "リマ")],
    "ko": [("한국", "서울"), ("일본", "도쿄"), ("프랑스", "파리"), ("독일", "베를린"), ("스페인", "마드리드"), ("베트남", "하노이"), ("이탈리아", "로마"), ("이집트", "카이로"), ("캐나다", "오타와"), ("페루", "리마")],
    "vi": [("Hàn Quốc", "Seoul"), ("Nhật Bản", "Tokyo"), ("Pháp", "Paris"), ("Đức", "Berlin"), ("Tây Ban Nha", "Madrid"), ("Việt Nam", "Hà Nội"), ("Ý", "Roma"), ("Ai Cập", "Cairo"), ("Canada", "Ottawa"), ("Peru", "Lima")],
}
WEATHER = {
    "en": ["sunny", "rainy", "cloudy", "windy", "snowy"],
    "es": ["soleado", "lluvioso", "nublado", "ventoso", "nevado"],
    "de": ["sonnig", "regnerisch", "bewölkt", "windig", "verschneit"],
    "ja": ["晴れ", "雨", "曇り", "風が強い日", "雪"],
    "ko": ["맑았습니다", "비가 왔습니다", "흐렸습니다", "바람이 불었습니다", "눈이 왔습니다"],
    "vi": ["nắng", "mưa", "nhiều mây", "có gió", "có tuyết"],
}
