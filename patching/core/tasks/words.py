"""The built-in tasks' word lists and templates (data, no logic beyond
filling a template): Wang et al.'s IOI names and templates, places and
objects, greater-than nouns, the facts, and the induction words. Filtered to
a tokenizer by :mod:`patching.core.tasks`.
"""

from __future__ import annotations

# ---------------------------------------------------------------- word lists

#: Wang et al.'s first names (Easy-Transformer ``NAMES``); filtered to the
#: ones that are a single token with a leading space.
NAMES = (
    "Aaron Adam Alan Alex Alice Amy Anderson Andre Andrew Andy Anna Anthony Arthur Austin Blake Brandon Brian "
    "Carter Charles Charlie Christian Christopher Clark Cole Collins Connor Crew Crystal Daniel David Dean Edward "
    "Elizabeth Emily Eric Eva Ford Frank George Georgia Graham Grant Henry Ian Jack Jacob Jake James Jamie Jane "
    "Jason Jay Jennifer Jeremy Jessica John Jonathan Jordan Joseph Joshua Justin Kate Kelly Kevin Kyle Laura Leon "
    "Lewis Lisa Louis Luke Madison Marco Marcus Maria Mark Martin Mary Matthew Max Michael Michelle Morgan Patrick "
    "Paul Peter Prince Rachel Richard River Robert Roman Rose Ruby Russell Ryan Sarah Scott Sean Simon Stephen "
    "Steven Sullivan Taylor Thomas Tyler Victoria Warren William"
).split()

#: Wang et al.'s 8 places and 8 objects, plus ordinary additions.
PLACES = (
    "store garden restaurant school hospital office house station "
    "park library museum beach market church airport hotel bank theater farm"
).split()
OBJECTS = (
    "ring kiss bone basketball computer necklace drink snack "
    "book gift letter ball flower key apple pen cake phone hat watch"
).split()

#: Wang et al.'s 15 BABA templates (Easy-Transformer ``BABA_TEMPLATES``, the
#: final " [A]" -- the answer -- removed). [B] is the subject S, [A] the
#: indirect object IO.
WANG_BABA_TEMPLATES = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
)

#: Variants of Wang et al.'s first template (same shape: opener, names,
#: three-word verb phrase, place, S2, giving verb, object). Wang's 15
#: templates have 11 different token shapes, so a one-length dataset built
#: from them alone would use one or two templates; these give the canonical
#: shape enough variety.
EXTRA_BABA_TEMPLATES = (
    "Later, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] walked to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] arrived at the [PLACE]. [B] handed a [OBJECT] to",
    "Today, [B] and [A] went to the [PLACE]. [B] brought a [OBJECT] to",
    "Then, [B] and [A] met at the [PLACE]. [B] passed a [OBJECT] to",
    "Then, [B] and [A] ran to the [PLACE]. [B] threw a [OBJECT] to",
    "Afterwards [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Later, [B] and [A] stayed at the [PLACE]. [B] sent a [OBJECT] to",
    "Then, [B] and [A] worked at the [PLACE]. [B] showed a [OBJECT] to",
    "Soon, [B] and [A] drove to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were at the [PLACE]. [B] offered a [OBJECT] to",
    "Next, [B] and [A] went to the [PLACE]. [B] lent a [OBJECT] to",
    "Then, [B] and [A] got to the [PLACE]. [B] sold a [OBJECT] to",
    "Once, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Yesterday, [B] and [A] were at the [PLACE]. [B] gave a [OBJECT] to",
)

BABA_TEMPLATES = WANG_BABA_TEMPLATES + EXTRA_BABA_TEMPLATES


def _abba(template: str) -> str:
    """The ABBA version: swap the first [B] and the first [A]."""
    return template.replace("[B]", "[X]", 1).replace("[A]", "[B]", 1).replace("[X]", "[A]", 1)


ABBA_TEMPLATES = tuple(_abba(t) for t in BABA_TEMPLATES)

#: Greater-than nouns (Hanna et al. use ~120 event nouns; these are ordinary
#: ones), filtered to single tokens.
GT_NOUNS = (
    "war expedition project reign drought siege famine strike campaign journey voyage trial conflict "
    "occupation festival dynasty crisis rebellion revolution construction marriage partnership tour "
    "boom recession blockade epidemic"
).split()
GT_CENTURIES = tuple(range(12, 20))  # XX in 12..19

#: Factual-recall relations: template with "{}" for the subject.
FACT_RELATIONS = {
    "capital": "The capital city of {} is",
    "language": "The official language of {} is",
    "currency": "The official currency of {} is the",
    "landmark": "The {} is located in the city of",
    "city_country": "The city of {} is located in the country of",
}

#: (relation, subject, answer). Answers are written without the leading space.
FACTS: tuple[tuple[str, str, str], ...] = tuple(
    [("capital", s, a) for s, a in (
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
        ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("England", "London"), ("Greece", "Athens"),
        ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Canada", "Ottawa"),
        ("Australia", "Canberra"), ("Thailand", "Bangkok"), ("Kenya", "Nairobi"), ("Norway", "Oslo"),
        ("Sweden", "Stockholm"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Hungary", "Budapest"),
        ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Peru", "Lima"), ("Cuba", "Havana"),
        ("Chile", "Santiago"), ("Belgium", "Brussels"), ("Switzerland", "Bern"), ("Scotland", "Edinburgh"),
        ("Wales", "Cardiff"), ("Afghanistan", "Kabul"), ("Syria", "Damascus"),
        ("Israel", "Jerusalem"), ("Ukraine", "Kyiv"), ("Korea", "Seoul"), ("Nepal", "Kathmandu"),
        ("Bulgaria", "Sofia"), ("Romania", "Bucharest"), ("Serbia", "Belgrade"), ("Indonesia", "Jakarta"),
        ("Vietnam", "Hanoi"), ("Argentina", "Buenos"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"),
        ("the Netherlands", "Amsterdam"), ("Lebanon", "Beirut"), ("Morocco", "Rabat"), ("Jordan", "Amman"),
        ("Tunisia", "Tunis"), ("Ghana", "Accra"), ("Ethiopia", "Addis"), ("Czechia", "Prague"),
    )]
    + [("language", s, a) for s, a in (
        ("France", "French"), ("Germany", "German"), ("Italy", "Italian"), ("Spain", "Spanish"),
        ("Japan", "Japanese"), ("China", "Chinese"), ("Russia", "Russian"), ("Portugal", "Portuguese"),
        ("Greece", "Greek"), ("Poland", "Polish"), ("Turkey", "Turkish"), ("Sweden", "Swedish"),
        ("the Netherlands", "Dutch"), ("Israel", "Hebrew"), ("Egypt", "Arabic"), ("Iran", "Persian"),
        ("Korea", "Korean"), ("Finland", "Finnish"), ("Hungary", "Hungarian"), ("Norway", "Norwegian"),
        ("Denmark", "Danish"), ("Thailand", "Thai"), ("Vietnam", "Vietnamese"), ("Brazil", "Portuguese"),
        ("Mexico", "Spanish"), ("Ukraine", "Ukrainian"), ("Indonesia", "Indonesian"), ("Romania", "Romanian"),
        ("Bulgaria", "Bulgarian"), ("Serbia", "Serbian"), ("Croatia", "Croatian"), ("Iceland", "Icelandic"),
        ("England", "English"), ("Australia", "English"), ("Argentina", "Spanish"), ("Chile", "Spanish"),
        ("Austria", "German"), ("Syria", "Arabic"), ("Iraq", "Arabic"), ("Morocco", "Arabic"),
    )]
    + [("currency", s, a) for s, a in (
        ("Japan", "yen"), ("Russia", "ruble"), ("India", "rupee"), ("China", "yuan"), ("Mexico", "peso"),
        ("Switzerland", "franc"), ("Sweden", "krona"), ("Britain", "pound"), ("England", "pound"),
        ("Canada", "dollar"), ("Australia", "dollar"), ("Germany", "euro"), ("France", "euro"),
        ("Italy", "euro"), ("Spain", "euro"), ("Poland", "zloty"), ("Turkey", "lira"), ("Israel", "shekel"),
        ("Brazil", "real"), ("Thailand", "baht"), ("Vietnam", "dong"), ("Hungary", "forint"),
    )]
    + [("landmark", s, a) for s, a in (
        ("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Kremlin", "Moscow"), ("Acropolis", "Athens"),
        ("Louvre", "Paris"), ("Parthenon", "Athens"), ("Brandenburg Gate", "Berlin"), ("Reichstag", "Berlin"),
        ("Sagrada Familia", "Barcelona"), ("Forbidden City", "Beijing"), ("Space Needle", "Seattle"),
        ("Burj Khalifa", "Dubai"), ("Hagia Sophia", "Istanbul"), ("Blue Mosque", "Istanbul"),
        ("Alhambra", "Granada"), ("Rialto Bridge", "Venice"), ("Charles Bridge", "Prague"),
        ("Tower Bridge", "London"), ("Prado Museum", "Madrid"), ("Uffizi Gallery", "Florence"),
        ("CN Tower", "Toronto"), ("Rijksmuseum", "Amsterdam"), ("Atomium", "Brussels"),
        ("Willis Tower", "Chicago"), ("White House", "Washington"), ("Taj Mahal", "Agra"),
        ("Western Wall", "Jerusalem"), ("Golden Pavilion", "Kyoto"),
        ("Tokyo Skytree", "Tokyo"), ("Little Mermaid statue", "Copenhagen"),
    )]
    + [("city_country", s, a) for s, a in (
        ("Toronto", "Canada"), ("Munich", "Germany"), ("Barcelona", "Spain"), ("Milan", "Italy"),
        ("Osaka", "Japan"), ("Shanghai", "China"), ("Sydney", "Australia"), ("Mumbai", "India"),
        ("Istanbul", "Turkey"), ("Marseille", "France"), ("Venice", "Italy"), ("Kyoto", "Japan"),
        ("Melbourne", "Australia"), ("Vancouver", "Canada"), ("Hamburg", "Germany"), ("Seville", "Spain"),
        ("Porto", "Portugal"), ("Krakow", "Poland"), ("Manchester", "England"), ("Glasgow", "Scotland"),
        ("Geneva", "Switzerland"), ("Zurich", "Switzerland"), ("Alexandria", "Egypt"), ("Casablanca", "Morocco"),
        ("Lagos", "Nigeria"), ("Bangalore", "India"), ("Dublin", "Ireland"), ("Stockholm", "Sweden"),
        ("Oslo", "Norway"), ("Helsinki", "Finland"), ("Athens", "Greece"), ("Lisbon", "Portugal"),
        ("Warsaw", "Poland"), ("Vienna", "Austria"), ("Budapest", "Hungary"), ("Prague", "Czechia"),
        ("Seoul", "Korea"), ("Beijing", "China"), ("Moscow", "Russia"), ("Cairo", "Egypt"), ("Tehran", "Iran"),
        ("Havana", "Cuba"), ("Lima", "Peru"), ("Nairobi", "Kenya"), 
    )]
)

#: Ordinary English words for the induction task; filtered to single tokens
#: (with a leading space) so prompts decode as clean text.
INDUCTION_WORDS = """
time year people way day man thing woman life child world school state family student group country problem hand
part place case week company system program question work government number night point home water room mother
area money story fact month lot right study book eye job word business issue side kind head house service friend
father power hour game line end member law car city community name president team minute idea kid body information
back parent face others level office door health person art war history party result change morning reason research
girl guy moment air teacher force education foot boy age policy music market sense nation plan college interest death
experience effect class control care field development role effort rate heart drug show leader light voice wife
police mind price report decision son view relationship town road arm difference value building action model season
society tax director position player record paper space ground form event official matter center couple site project
activity star table need court oil situation cost industry figure street image phone data picture practice piece land
product doctor wall patient worker news test movie north love support technology step baby computer type attention
film tree source organization hair window evidence population army garden river island forest mountain ocean
desert valley bridge castle village farm horse dog cat bird fish apple bread cheese coffee sugar salt butter honey
lemon orange banana tomato potato carrot onion pepper rice soup cake pie candy chair bed lamp clock mirror carpet
pencil brush bottle glass cup plate knife fork spoon basket bucket rope chain wheel engine rocket planet moon sun
cloud rain snow storm wind thunder fire smoke stone sand metal gold silver iron copper wood cotton silk wool
leather plastic rubber glue paint ink shoe hat coat shirt dress belt glove sock button pocket ring necklace watch
king queen prince soldier captain pilot farmer hunter sailor artist singer dancer writer judge nurse lawyer chef
tiger lion bear wolf fox rabbit mouse snake frog duck goose eagle owl whale shark dolphin monkey elephant camel
green blue yellow purple brown black white red pink happy angry quiet loud bright dark heavy quick
slow strong weak rich poor young old fresh clean dirty empty full deep wide narrow sharp smooth rough soft hard
""".split()

INDUCTION_LEN = 10  # n: the block x1..xn is repeated up to x(n-1)


